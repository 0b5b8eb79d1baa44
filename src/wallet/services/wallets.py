"""Reads of a user's wallet: balances and transaction history.

Both documents are rendered to JSON by PostgreSQL and passed through as text: the history reuses
`wallet_transaction_json`, so an item in a page is the same document a write returned.
"""

from __future__ import annotations

import asyncpg
import orjson

from wallet.domain import errors
from wallet.domain.rules import TransactionType
from wallet.services.pagination import decode_int_cursor, encode_cursor

BALANCES_SQL = """
SELECT jsonb_build_object(
    'user_id', u.id,
    'balances', coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'asset_type', a.asset_code,
                   'name', t.name,
                   'scale', t.scale,
                   'balance', a.balance_minor,
                   'held', a.held_minor,
                   'available', a.balance_minor - a.held_minor) ORDER BY a.asset_code)
        FROM accounts a JOIN asset_types t ON t.code = a.asset_code
        WHERE a.user_id = u.id AND ($2::text IS NULL OR a.asset_code = $2)), '[]'::jsonb)
)::text
FROM users u WHERE u.id = $1
"""

HISTORY_SQL = """
SELECT t.seq, wallet_transaction_json(t.id)::text AS body
FROM transactions t
WHERE t.user_id = $1
  AND ($2::text IS NULL OR t.asset_code = $2)
  AND ($3::text IS NULL OR t.type = $3)
  AND ($4::bigint IS NULL OR t.seq < $4)
ORDER BY t.seq DESC
LIMIT $5
"""


async def _require_user(pool: asyncpg.Pool, user_id: str) -> None:
    if await pool.fetchval("SELECT 1 FROM users WHERE id = $1", user_id) is None:
        raise errors.WalletError(errors.USER_NOT_FOUND, f"no user with id {user_id}")


async def balances_json(pool: asyncpg.Pool, user_id: str, asset_code: str | None) -> str:
    body = await pool.fetchval(BALANCES_SQL, user_id, asset_code)
    if body is None:
        raise errors.WalletError(errors.USER_NOT_FOUND, f"no user with id {user_id}")
    assert isinstance(body, str)
    return body


async def history_json(
    pool: asyncpg.Pool,
    user_id: str,
    *,
    limit: int,
    cursor: str | None,
    asset_code: str | None,
    type: TransactionType | None,
) -> str:
    before_seq = decode_int_cursor(cursor)
    rows = await pool.fetch(
        HISTORY_SQL, user_id, asset_code, type.value if type else None, before_seq, limit + 1
    )
    if not rows:
        await _require_user(pool, user_id)
    page = rows[:limit]
    next_cursor = encode_cursor(str(page[-1]["seq"])) if len(rows) > limit else None
    return (
        '{"data":['
        + ",".join(row["body"] for row in page)
        + '],"next_cursor":'
        + orjson.dumps(next_cursor).decode()
        + "}"
    )
