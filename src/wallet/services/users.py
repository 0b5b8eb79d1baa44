"""Users and the reference list of asset types."""

from __future__ import annotations

import unicodedata
from typing import Any

import asyncpg

from wallet.domain import errors
from wallet.domain.rules import USER_ID_PATTERN
from wallet.services.pagination import CursorList, decode_text_cursor, encode_text_cursor

USER_COLUMNS = (
    "id AS user_id, name,"
    " to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS created_at"
)
MAX_ASSET_TYPES_LISTED = 1_000
USER_NAME_MAX_CHARS = 200  # as the column's check; counted after normalisation


def normalized_name(name: str) -> str:
    """A user's name in Unicode NFC: "Zoë" typed with a combining diaeresis (NFD, as macOS
    keyboards and file names give it) and with the precomposed ë are one name, stored once and
    found by either. Applied on every write of a name and to every name search."""
    return unicodedata.normalize("NFC", name)


async def create_user(pool: asyncpg.Pool, user_id: str, name: str) -> tuple[dict[str, Any], bool]:
    """Returns the user and whether it was created now. Repeating the same request is not an
    error; asking for an existing id with another name is (names compare in NFC)."""
    name = normalized_name(name)
    if len(name) > USER_NAME_MAX_CHARS:  # NFC lengthens a few characters (e.g. U+0958)
        raise errors.WalletError(
            errors.VALIDATION_ERROR, f"name is longer than {USER_NAME_MAX_CHARS} characters in NFC", "name"
        )
    async with pool.acquire() as conn, conn.transaction():
        created = await conn.fetchval("SELECT wallet_ensure_user($1, $2)", user_id, name)
        row = await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id)
    assert row is not None
    if not created and row["name"] != name:
        raise errors.WalletError(errors.USER_EXISTS, f"user {user_id} already exists with another name")
    return dict(row), created


async def list_users(pool: asyncpg.Pool, *, limit: int, cursor: str | None) -> dict[str, Any]:
    after_id = decode_text_cursor(CursorList.USERS, cursor, USER_ID_PATTERN)
    rows = await pool.fetch(
        f"SELECT {USER_COLUMNS} FROM users WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2",
        after_id,
        limit + 1,
    )
    page = [dict(row) for row in rows[:limit]]
    next_cursor = encode_text_cursor(CursorList.USERS, page[-1]["user_id"]) if len(rows) > limit else None
    return {"data": page, "next_cursor": next_cursor}


async def list_asset_types(pool: asyncpg.Pool) -> dict[str, Any]:
    rows = await pool.fetch(
        "SELECT code, name, scale, is_active FROM asset_types ORDER BY code LIMIT $1",
        MAX_ASSET_TYPES_LISTED,
    )
    return {"data": [dict(row) for row in rows]}
