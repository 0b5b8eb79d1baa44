"""Per-day totals for the reports, kept in the background, off the posting path.

The liability report and the daily volume read the whole ledger of their period. A task in each
worker of `wallet serve` adds settled transactions (older than `audit_settle_ms`: seq is taken
when a posting writes, not when it commits), in seq order and in chunks, to one row per UTC day
and kind (migration 0014, `wallet_roll_up` in db/sql/functions/65_day_totals.sql): the lot
movements per asset, origin and transaction type, and the volume per asset. A report sums those
rows and reads movement by movement only what the totals cannot answer (a day its window cuts,
what is not rolled up yet), so its figures do not depend on how far the roll-up has come.
Writing one row per day and kind from every posting would serialise the day's postings on it.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import structlog

from wallet.settings import Settings

log = structlog.get_logger("wallet.rollup")

# Taking turns with another process: how long to wait before asking for the checkpoint again.
TURN_WAIT_S = 0.05


async def roll_up(
    pool: asyncpg.Pool, settings: Settings, *, rest: bool = False, take_turns: bool = False
) -> int:
    """Adds the settled transactions not rolled up yet to the per-day totals, a chunk per
    database transaction, until caught up; returns how many it rolled up. When another process
    holds the checkpoint, it stops there (the background task: that process goes on), or with
    `take_turns` waits for the other's chunk and goes on (`wallet roll-up`). With `rest`, it
    rests after each chunk as long as the chunk took: catching up on a backlog leaves the
    requests at least half the time."""
    chunk = settings.rollup_chunk_transactions
    settle_s = settings.audit_settle_ms / 1000
    rolled = 0
    while True:
        started = time.monotonic()
        count = await pool.fetchval("SELECT wallet_roll_up($1, make_interval(secs => $2))", chunk, settle_s)
        if count is None:  # another process is rolling a chunk
            if not take_turns:
                return rolled
            await asyncio.sleep(TURN_WAIT_S)
            continue
        assert isinstance(count, int)
        assert 0 <= count <= chunk
        rolled += count
        if count < chunk:
            return rolled
        if rest:
            await asyncio.sleep(time.monotonic() - started)


async def run_roller(pool: asyncpg.Pool, settings: Settings) -> None:
    """Background task of each worker: bring the totals up to date every `rollup_interval_ms`."""
    interval_s = settings.rollup_interval_ms / 1000
    while True:
        await asyncio.sleep(interval_s)
        try:
            rolled = await roll_up(pool, settings, rest=True)
            if rolled:
                log.debug("rolled_up", transactions=rolled)
        except Exception as exc:  # a chunk that fails is done again by the next run (from the checkpoint)
            log.warning("roll_up_failed", error=type(exc).__name__)
