"""Opaque cursors for keyset pagination. A cursor names the last item a page returned; the next
page starts strictly after it, so pages stay stable while new rows are written."""

from __future__ import annotations

import base64
import binascii

from wallet.domain.errors import InvalidRequest

MAX_CURSOR_CHARS = 200


def encode_cursor(position: str) -> str:
    return base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    if not cursor or len(cursor) > MAX_CURSOR_CHARS:
        raise InvalidRequest("cursor is not one this service issued", "cursor")
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidRequest("cursor is not one this service issued", "cursor") from None


def decode_int_cursor(cursor: str | None) -> int | None:
    position = decode_cursor(cursor)
    if position is None:
        return None
    if not position.isdigit() or len(position) > 19:
        raise InvalidRequest("cursor is not one this service issued", "cursor")
    return int(position)


def check_limit(limit: int | None, default: int, maximum: int) -> int:
    if limit is None:
        return default
    if not 1 <= limit <= maximum:
        raise InvalidRequest(f"limit must be between 1 and {maximum}", "limit")
    return limit
