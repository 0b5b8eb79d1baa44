"""Reads for the operator console: find users, audit the books (the live audit), and daily volume
per asset.

Each is bounded: searches and volume run under the service's statement timeout (a slow one is
503 `busy`), pages and windows have maxima, and at most one audit runs per worker at a time
(callers that arrive while it runs share its result).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from wallet.domain import errors
from wallet.domain.times import api_time
from wallet.services.audit import run_audit
from wallet.services.users import USER_COLUMNS, normalized_name
from wallet.settings import Settings

SEARCH_QUERY_MAX_CHARS = 64
VOLUME_DAYS_DEFAULT = 30
VOLUME_DAYS_MAX = 90

# An exact id first (one primary-key probe); then ids starting with the query and names
# containing it, case-insensitively and in Unicode NFC (the query is normalised too, and names
# written before names were normalised on write are compared normalised), in id order. Without a trigram index the second part scans
# `users` until it has a page; the statement timeout bounds it.
SEARCH_USERS_SQL = f"""
(SELECT {USER_COLUMNS}, 0 AS rank FROM users WHERE id = $1::text)
UNION ALL
(SELECT {USER_COLUMNS}, 1 AS rank FROM users
  WHERE id <> $1::text
    AND (lower(id) LIKE ($2::text || '%') ESCAPE '\\' OR lower(normalize(name, NFC)) LIKE ('%' || $2::text || '%') ESCAPE '\\')
  ORDER BY id LIMIT $3::int)
ORDER BY rank, user_id
LIMIT $3::int
"""

# What flowed into and out of user accounts (system accounts are the other side), per UTC day
# of the transactions' time and asset: credited and debited amounts and the number of
# transactions; from the per-day totals (wallet.services.rollup) and what is not rolled up yet.
VOLUME_SQL = """
SELECT day, asset_code, credited_minor::text AS credited, debited_minor::text AS debited, transactions
FROM wallet_volume_per_day($1)
"""


def _like_escaped(text: str) -> str:
    return text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def search_users(pool: asyncpg.Pool, query: str, *, limit: int) -> dict[str, Any]:
    rows = await pool.fetch(SEARCH_USERS_SQL, query, _like_escaped(normalized_name(query)), limit)
    return {
        "query": query,
        "data": [{"user_id": r["user_id"], "name": r["name"], "created_at": r["created_at"]} for r in rows],
    }


async def volume_per_day(pool: asyncpg.Pool, days: int, *, today: date | None = None) -> dict[str, Any]:
    """The last `days` UTC days, today included; days without postings are left out."""
    last = today or datetime.now(UTC).date()
    first = last - timedelta(days=days - 1)
    rows = await pool.fetch(VOLUME_SQL, first)
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


_audits: dict[tuple[asyncpg.Pool, bool], asyncio.Task[dict[str, Any]]] = {}


async def audit(pool: asyncpg.Pool, settings: Settings, *, full: bool) -> dict[str, Any]:
    """The live audit as a document (see wallet.services.audit). One run of each kind at a time
    per pool: a caller arriving while one runs waits for it and gets the same answer."""
    task = _audits.get((pool, full))
    if task is None:
        task = asyncio.create_task(_audit(pool, settings, full))
        _audits[(pool, full)] = task
        task.add_done_callback(lambda _: _audits.pop((pool, full), None))
    # A caller that goes away does not cancel the audit others are waiting for.
    return await asyncio.shield(task)


async def _audit(pool: asyncpg.Pool, settings: Settings, full: bool) -> dict[str, Any]:
    try:
        # Asked by a request: bounded by a request's statement timeout, not the periodic run's.
        # Chunk after chunk for half the statement timeout (a backlog is left to the periodic
        # run: the answer says how far this one got).
        result = await run_audit(
            pool,
            settings,
            full=full,
            query_timeout_ms=settings.db_statement_timeout_ms,
            max_run_ms=settings.db_statement_timeout_ms // 2,
        )
    except TimeoutError:
        raise errors.WalletError(
            errors.BUSY, "the audit took longer than the statement timeout; run `wallet verify` instead"
        ) from None
    report = result.verify_report
    if report is not None:
        text = report.render()
    else:
        text = "\n".join(
            [
                f"checked the transactions with seq in ({result.from_seq}, {result.to_seq}] and every user account"
            ]
            + (
                []
                if result.caught_up
                else [f"behind: the transactions after seq {result.to_seq} are left to the next runs"]
            )
            + (["OK: the books balance"] if result.consistent else [])
            + [
                f"FAIL: {title}\n" + "\n".join(f"  - {item}" for item in items)
                for title, items in result.problems.items()
            ]
        )
    return {
        "kind": result.kind,
        "clean": result.consistent,
        "checked_at": api_time(result.finished_at),
        "started_at": api_time(result.started_at),
        "from_seq": result.from_seq,
        "to_seq": result.to_seq,
        "last_clean_at": api_time(result.last_clean_at) if result.last_clean_at else None,
        "problems": [{"check": title, "details": items} for title, items in result.problems.items()],
        "counts": None
        if report is None
        else {
            "user_accounts": report.user_accounts,
            "transactions": report.transactions,
            "ledger_entries": report.ledger_entries,
            "chain_links": report.chain_links,
        },
        "system_balances": []
        if report is None
        else [
            {"account": system_code, "asset_type": asset_code, "balance": int(balance)}
            for system_code, asset_code, balance in report.system_balances
        ],
        "report": text,
    }
