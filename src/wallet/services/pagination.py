"""Opaque cursors for keyset pagination. A cursor names the last item a page returned; the next
page starts strictly after it, so pages stay stable while new rows are written."""

from __future__ import annotations

import base64
import binascii

from wallet.domain import errors
from wallet.domain.rules import CURSOR_MAX_CHARS


def _not_ours() -> errors.WalletError:
    return errors.WalletError(errors.INVALID_REQUEST, "cursor is not one this service issued", "cursor")


def encode_cursor(position: str) -> str:
    return base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    if not cursor or len(cursor) > CURSOR_MAX_CHARS:
        raise _not_ours()
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _not_ours() from None


def decode_int_cursor(cursor: str | None) -> int | None:
    position = decode_cursor(cursor)
    if position is None:
        return None
    # ASCII digits only: str.isdigit() also accepts "²" and other digits int() refuses.
    if not (position.isascii() and position.isdigit()) or len(position) > 19:
        raise _not_ours()
    return int(position)


def check_limit(limit: int | None, default: int, maximum: int) -> int:
    if limit is None:
        return default
    if not 1 <= limit <= maximum:
        raise errors.WalletError(errors.INVALID_REQUEST, f"limit must be between 1 and {maximum}", "limit")
    return limit
