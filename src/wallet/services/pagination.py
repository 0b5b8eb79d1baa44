"""Opaque cursors for keyset pagination, and page sizes: one codec and one check for every list.

A cursor names the last item a page returned; the next page starts strictly after it, so pages
stay stable while new rows are written. It is the URL-safe base64 (no padding) of

    version (1 byte) | list (1 byte) | position | check (8 bytes)

where the position is the list's key (big-endian 64-bit numbers, or a user id in UTF-8) and the
check a keyed BLAKE2b of what precedes it and of the list's scope (whose list it is: the user of a
history or of holds, the webhook endpoint of dead letters), which the cursor does not carry. A
cursor is taken only as the service wrote it: the canonical base64 of a known version, of the list
it is given to (the same user's history, not another's), with its check and a position of that
list's shape. Anything else (edited, truncated, padded, re-encoded, from another list, longer
than CURSOR_MAX_CHARS) is refused with 422 `invalid_request` naming the parameter. The check's key
is not a secret, so this is not a signature: a cursor carries no authority, a forged one would
name a position the caller may read anyway, and every position is checked for its shape.

The change feed's cursors written before this codec (the base64 of `txid.seq`) stay valid, in their
canonical form only: consumers keep them across restarts (see `decode_event_cursor`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from enum import IntEnum

from wallet.domain import errors
from wallet.domain.rules import CURSOR_MAX_CHARS

_VERSION = 1
_CHECK_BYTES = 8
_CHECK_KEY = b"wallet-cursor-v1"
_INT_MAX = 2**63 - 1  # bigint, and xid8 as far as it is in use
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
_LEGACY_EVENT = re.compile(r"(0|[1-9][0-9]{0,18})\.(0|[1-9][0-9]{0,18})", re.ASCII)


class CursorList(IntEnum):
    """The list a cursor belongs to; a cursor of one is refused by every other."""

    HISTORY = 1  # GET /wallets/{user_id}/transactions: the seq of the last transaction
    HOLDS = 2  # GET /wallets/{user_id}/holds: the seq of the last hold
    DEAD_LETTERS = 3  # GET /webhooks/{id}/dead-letters: the id of the last dead letter
    USERS = 4  # GET /users: the id of the last user
    EVENTS = 5  # GET /events: (txid, seq) of the last event


def _check(head: bytes, scope: str) -> bytes:
    return hashlib.blake2b(head + b"\x00" + scope.encode(), key=_CHECK_KEY, digest_size=_CHECK_BYTES).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _seal(kind: CursorList, position: bytes, scope: str) -> str:
    head = bytes((_VERSION, kind)) + position
    return _b64(head + _check(head, scope))


def not_issued(field: str = "cursor") -> errors.WalletError:
    return errors.WalletError(
        errors.INVALID_REQUEST,
        f"{field}: not a cursor this service issued for this list; pass the next_cursor of the"
        " previous page unchanged",
        field,
    )


def _raw(cursor: str, field: str) -> bytes:
    """The bytes of a cursor in the canonical form the service writes, or a refusal."""
    if not 0 < len(cursor) <= CURSOR_MAX_CHARS or not _BASE64URL.fullmatch(cursor):
        raise not_issued(field)
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise not_issued(field) from None
    if _b64(raw) != cursor:  # stray bits in the last character, or an impossible length
        raise not_issued(field)
    return raw


def _open(kind: CursorList, cursor: str, field: str, scope: str) -> bytes:
    """The position a cursor of this list holds, or a refusal."""
    raw = _raw(cursor, field)
    head, check = raw[:-_CHECK_BYTES], raw[-_CHECK_BYTES:]
    if (
        len(head) < 2
        or head[0] != _VERSION
        or head[1] != kind
        or not hmac.compare_digest(check, _check(head, scope))
    ):
        raise not_issued(field)
    return head[2:]


def encode_numbers_cursor(kind: CursorList, *numbers: int, scope: str = "") -> str:
    assert all(0 <= n <= _INT_MAX for n in numbers), numbers
    return _seal(kind, b"".join(n.to_bytes(8, "big") for n in numbers), scope)


def decode_numbers_cursor(
    kind: CursorList, cursor: str | None, count: int, field: str = "cursor", scope: str = ""
) -> tuple[int, ...] | None:
    if cursor is None:
        return None
    position = _open(kind, cursor, field, scope)
    if len(position) != 8 * count:
        raise not_issued(field)
    numbers = tuple(int.from_bytes(position[i : i + 8], "big") for i in range(0, len(position), 8))
    if any(n > _INT_MAX for n in numbers):
        raise not_issued(field)
    return numbers


def encode_int_cursor(kind: CursorList, number: int, *, scope: str) -> str:
    """A cursor of a list of one scope (a user's history: the user id)."""
    return encode_numbers_cursor(kind, number, scope=scope)


def decode_int_cursor(
    kind: CursorList, cursor: str | None, *, scope: str, field: str = "cursor"
) -> int | None:
    numbers = decode_numbers_cursor(kind, cursor, 1, field, scope)
    return None if numbers is None else numbers[0]


def encode_text_cursor(kind: CursorList, text: str) -> str:
    return _seal(kind, text.encode(), "")


def decode_text_cursor(
    kind: CursorList, cursor: str | None, pattern: str, field: str = "cursor"
) -> str | None:
    """The text a cursor of this list holds, which must match `pattern` (as what it names does)."""
    if cursor is None:
        return None
    try:
        text = _open(kind, cursor, field, "").decode()
    except UnicodeDecodeError:
        raise not_issued(field) from None
    if not re.fullmatch(pattern, text):
        raise not_issued(field)
    return text


def decode_event_cursor(cursor: str | None, field: str = "after") -> tuple[int, int] | None:
    """(txid, seq) of a change-feed cursor: this codec's, or the form written before it (the
    base64 of `txid.seq`, canonical: no padding, no leading zeros, each at most 2^63 - 1)."""
    if cursor is None:
        return None
    raw = _raw(cursor, field)
    if raw[:1] == bytes((_VERSION,)):
        numbers = decode_numbers_cursor(CursorList.EVENTS, cursor, 2, field)
        assert numbers is not None
        return numbers[0], numbers[1]
    legacy = _LEGACY_EVENT.fullmatch(raw.decode("ascii", errors="replace"))
    if legacy is None or int(legacy[1]) > _INT_MAX or int(legacy[2]) > _INT_MAX:
        raise not_issued(field)
    return int(legacy[1]), int(legacy[2])


def check_limit(limit: int | None, default: int, maximum: int) -> int:
    """A page size: `default` when not given, else a whole number from 1 to `maximum`
    (WALLET_PAGE_SIZE_MAX). Whatever is wrong with it (0, negative, too large, not a whole
    number), the answer is the same: 422 `validation_error` naming `limit`."""
    if limit is None:
        return default
    if not 1 <= limit <= maximum:
        raise limit_error(maximum)
    return limit


def limit_error(maximum: int) -> errors.WalletError:
    return errors.WalletError(
        errors.VALIDATION_ERROR,
        f"limit: must be a whole number from 1 to {maximum} (WALLET_PAGE_SIZE_MAX)",
        "limit",
    )
