"""`python -m tools.as_of_plans`: balances and history as of a time on a user with a long history.

Creates a scratch database (`wallet_as_of_plans`) on the given server, posts `--postings` top-ups,
spends and transfers for one user through the service's own posting functions, then prints the
query plans (EXPLAIN ANALYZE, as the service plans them) of the balance as of an instant a third
of the way into that history and of history windows, and the time each read takes end to end
through the service's code (mean of 50). Used for docs/PERFORMANCE.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

import asyncpg
import typer

from tools.scratch_db import (
    SERVER_URL,
    KeepOption,
    ScratchNameOption,
    ServerUrlOption,
    drop_databases,
    ensure_database,
    with_database,
)

SCRATCH_DATABASE = "wallet_as_of_plans"
ASSETS = ["DIAMONDS", "GOLD_COINS", "LOYALTY_POINTS"]


async def _load(url: str, postings: int) -> None:
    from wallet.db.migrate import upgrade_to_head_async
    from wallet.services.seed import seed_reference_data

    await upgrade_to_head_async(url)
    conn = await asyncpg.connect(url, server_settings={"plan_cache_mode": "force_generic_plan"})
    try:
        await seed_reference_data(conn)
        for user in ("heavy", "friend"):
            await conn.execute("SELECT wallet_ensure_user($1, $1)", user)
        key = await conn.fetchval(
            "INSERT INTO api_keys (name, key_prefix, key_sha256, scopes)"
            " VALUES ('plans', 'x', sha256('as-of-plans'), '{admin}') RETURNING id"
        )
        post = await conn.prepare(
            "SELECT outcome FROM wallet_post_transaction($1, $2, $3, 'heavy', $4, 1, NULL, '{}')"
        )
        transfer = await conn.prepare(
            "SELECT outcome FROM wallet_post_transfer($1, $2, 'heavy', 'friend', 'GOLD_COINS', 1, 0, NULL, '{}')"
        )
        # One database transaction each, as over HTTP. ANALYZE every 10,000: this machine's
        # PostgreSQL runs without autovacuum, and plans cached while the tables were empty (the
        # trigger functions' joins) would otherwise stay sequential scans, slowing each posting
        # in proportion to the history.
        for n in range(1, postings + 1):
            if n % 10_000 == 0:
                await conn.execute("ANALYZE transactions, ledger_entries, idempotency_keys")
            if n % 50 == 0:
                await transfer.fetchval(key, f"t{n}")
            else:
                kind = "spend" if n % 3 == 0 else "topup"
                await post.fetchval(key, f"k{n}", kind, "DIAMONDS" if n % 10 == 0 else "GOLD_COINS")
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def _report(url: str) -> None:
    from wallet.db.pool import create_pool
    from wallet.domain.times import api_time
    from wallet.services.wallets import BALANCES_AS_OF_SQL, HISTORY_RANGE_SQL, balances_json, history_json
    from wallet.settings import Settings

    settings = Settings(database_url=url)
    pool = await create_pool(settings, url)
    try:
        row = await pool.fetchrow(
            "SELECT count(*), min(created_at), max(created_at) FROM transactions WHERE user_id = 'heavy'"
        )
        assert row is not None
        count, first, last = row
        third = first + (last - first) / 3
        print(f"user 'heavy': {count} postings from {first} to {last}; T = {third}\n")
        async with pool.acquire() as conn:
            plan = await conn.fetch(
                "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + BALANCES_AS_OF_SQL,
                "heavy",
                None,
                third,
                api_time(third),
            )
            print("## balance as of T (generic plan, as the service runs it)\n")
            print("\n".join(r[0] for r in plan), "\n")
            async with conn.transaction():
                await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
                for title, lo, hi in (
                    ("history from the start to T", first, third),
                    ("history within one second after T", third, third + dt.timedelta(seconds=1)),
                ):
                    plan = await conn.fetch(
                        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + HISTORY_RANGE_SQL,
                        "heavy",
                        ASSETS,
                        None,
                        None,
                        51,
                        lo,
                        hi,
                    )
                    print(f"## {title} (ids of one page; custom plan, as the service runs it)\n")
                    print("\n".join(r[0] for r in plan), "\n")
        reads: dict[str, Callable[[], Awaitable[str]]] = {
            "balance now": lambda: balances_json(pool, "heavy", None),
            "balance as of T": lambda: balances_json(pool, "heavy", None, third),
            "history, newest page of 50": lambda: history_json(
                pool, "heavy", limit=50, cursor=None, asset_code=None, type=None
            ),
            "history, page of 50 before T": lambda: history_json(
                pool, "heavy", limit=50, cursor=None, asset_code=None, type=None, to_time=third
            ),
            "history, one second after T": lambda: history_json(
                pool,
                "heavy",
                limit=50,
                cursor=None,
                asset_code=None,
                type=None,
                from_time=third,
                to_time=third + dt.timedelta(seconds=1),
            ),
        }
        print("| read (through the service's code) | mean of 50 |\n| --- | --- |")
        for name, read in reads.items():
            for _ in range(5):
                await read()
            started = time.perf_counter()
            for _ in range(50):
                await read()
            print(f"| {name} | {(time.perf_counter() - started) / 50 * 1000:.2f} ms |")
    finally:
        await pool.close()


app = typer.Typer(add_completion=False)


@app.command()
def main(
    database_url: ServerUrlOption = SERVER_URL,
    postings: Annotated[int, typer.Option(min=100, max=10_000_000)] = 100_000,
    keep: KeepOption = False,
    scratch_database: ScratchNameOption = SCRATCH_DATABASE,
) -> None:
    """Load a long history for one user and print the plans and timings of reads as of a time."""

    async def run() -> None:
        url = with_database(database_url, scratch_database)
        if await ensure_database(database_url, scratch_database, reuse=True):
            started = time.monotonic()
            await _load(url, postings)
            print(f"loaded {postings} postings in {time.monotonic() - started:.0f} s\n")
        await _report(url)
        if not keep:
            await drop_databases(database_url, scratch_database)

    asyncio.run(run())


if __name__ == "__main__":
    app()
