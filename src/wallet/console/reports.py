"""Reads for the operator console: find users, audit the books, and daily volume per asset.

Each is bounded: searches and volume run under the service's statement timeout (a slow one is
503 `busy`), pages and windows have maxima, and at most one audit runs per worker at a time
(callers that arrive while it runs share its result).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import asyncpg

from wallet.domain import errors
from wallet.services.users import USER_COLUMNS
from wallet.services.verify import verify_ledger

SEARCH_QUERY_MAX_CHARS = 64
VOLUME_DAYS_DEFAULT = 30
VOLUME_DAYS_MAX = 90

# An exact id first (one primary-key probe); then ids starting with the query and names
# containing it, case-insensitively, in id order. Without a trigram index the second part scans
# `users` until it has a page; the statement timeout bounds it.
SEARCH_USERS_SQL = f"""
(SELECT {USER_COLUMNS}, 0 AS rank FROM users WHERE id = $1::text)
UNION ALL
(SELECT {USER_COLUMNS}, 1 AS rank FROM users
  WHERE id <> $1::text
    AND (lower(id) LIKE ($2::text || '%') ESCAPE '\\' OR lower(name) LIKE ('%' || $2::text || '%') ESCAPE '\\')
  ORDER BY id LIMIT $3::int)
ORDER BY rank, user_id
LIMIT $3::int
"""

# What flowed into and out of user accounts (system accounts are the other side), per UTC day
# and asset: credited and debited amounts and the number of transactions.
VOLUME_SQL = """
SELECT (e.created_at AT TIME ZONE 'UTC')::date AS day, e.asset_code,
       coalesce(sum(e.amount_minor) FILTER (WHERE e.amount_minor > 0), 0)::text AS credited,
       coalesce(-sum(e.amount_minor) FILTER (WHERE e.amount_minor < 0), 0)::text AS debited,
       count(DISTINCT e.transaction_id) AS transactions
FROM ledger_entries e
JOIN accounts a ON a.id = e.account_id AND a.kind = 'user'
WHERE e.created_at >= $1
GROUP BY 1, 2
ORDER BY 1, 2
"""


def _like_escaped(text: str) -> str:
    return text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def search_users(pool: asyncpg.Pool, query: str, *, limit: int) -> dict[str, Any]:
    rows = await pool.fetch(SEARCH_USERS_SQL, query, _like_escaped(query), limit)
    return {
        "query": query,
        "data": [{"user_id": r["user_id"], "name": r["name"], "created_at": r["created_at"]} for r in rows],
    }


async def volume_per_day(pool: asyncpg.Pool, days: int, *, today: date | None = None) -> dict[str, Any]:
    """The last `days` UTC days, today included; days without postings are left out."""
    last = today or datetime.now(UTC).date()
    first = last - timedelta(days=days - 1)
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    rows = await pool.fetch(VOLUME_SQL, start)
    return {
        "days": days,
        "from": first.isoformat(),
        "to": last.isoformat(),
        "data": [
            {
                "day": row["day"].isoformat(),
                "asset_type": row["asset_code"],
                # Sums of bigints are numeric in PostgreSQL: read as text, exact.
                "credited": int(row["credited"]),
                "debited": int(row["debited"]),
                "transactions": row["transactions"],
            }
            for row in rows
        ],
    }


_audits: dict[asyncpg.Pool, asyncio.Task[dict[str, Any]]] = {}


async def audit(pool: asyncpg.Pool) -> dict[str, Any]:
    """`wallet verify` as a document. One audit at a time per pool: a caller arriving while one
    runs waits for it and gets the same report."""
    task = _audits.get(pool)
    if task is None:
        task = asyncio.create_task(_audit(pool))
        _audits[pool] = task
        task.add_done_callback(lambda _: _audits.pop(pool, None))
    # A caller that goes away does not cancel the audit others are waiting for.
    return await asyncio.shield(task)


async def _audit(pool: asyncpg.Pool) -> dict[str, Any]:
    try:
        async with pool.acquire() as conn:
            # A pool connection proxies every Connection method verify_ledger uses.
            report = await verify_ledger(cast(asyncpg.Connection, conn))
    except TimeoutError:
        # Each check runs under the pool's command timeout (the statement timeout + 1 s).
        raise errors.WalletError(
            errors.BUSY, "the audit took longer than the statement timeout; run `wallet verify` instead"
        ) from None
    return {
        "clean": report.clean,
        "checked_at": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "problems": [{"check": title, "details": items} for title, items in report.problems.items()],
        "counts": {
            "user_accounts": report.user_accounts,
            "transactions": report.transactions,
            "ledger_entries": report.ledger_entries,
            "chain_links": report.chain_links,
        },
        "system_balances": [
            {"account": system_code, "asset_type": asset_code, "balance": int(balance)}
            for system_code, asset_code, balance in report.system_balances
        ],
        "report": report.render(),
    }
