"""The liability report's per-day totals (wallet.services.lots.roll_up, migration 0014):
whatever the roll-up has reached (nothing, part of a day, everything), the report gives, for any
window, the figures of its definition, the sum of every lot movement by its transaction's time;
the roll-up takes only settled transactions, in seq order, and two rollers at once count each
transaction once. A ledger of three UTC days, in a database of its own."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import asyncpg
import pytest
from tools.bench import prepare_ledger
from tools.scale_load import load_transactions

from tests.support import posting_without_pause
from wallet.db.pool import create_pool
from wallet.services.rollup import roll_up, run_roller
from wallet.services.verify import ROLLUP, verify_ledger
from wallet.settings import Settings

USERS = 12
PER_DAY = 240
DAYS = 3

# The report as first written (before migration 0014): every lot movement, stamped with its
# transaction's time (an opening lot's own), outstanding up to and including $1, flows in [$2, $3).
DEFINITION = """
SELECT a.code AS asset_type,
       coalesce(sum(m.amount_minor) FILTER (WHERE m.origin = 'purchased' AND m.at <= $1), 0)::bigint,
       coalesce(sum(m.amount_minor) FILTER (WHERE m.origin = 'granted' AND m.at <= $1), 0)::bigint,
       coalesce(sum(m.amount_minor) FILTER (WHERE m.in_period AND m.type = 'topup'), 0)::bigint,
       coalesce(sum(m.amount_minor) FILTER (WHERE m.in_period AND m.type = 'bonus'), 0)::bigint,
       coalesce(-sum(m.amount_minor) FILTER (WHERE m.in_period AND m.type IN ('spend', 'capture')), 0)::bigint,
       coalesce(sum(m.amount_minor) FILTER (WHERE m.in_period AND m.type = 'refund'), 0)::bigint,
       coalesce(-sum(m.amount_minor) FILTER (WHERE m.in_period AND m.type = 'expiry'), 0)::bigint,
       coalesce(-sum(m.amount_minor) FILTER (WHERE m.in_period AND m.type = 'clawback'), 0)::bigint,
       coalesce(-sum(m.amount_minor) FILTER (WHERE m.in_period AND m.type = 'transfer'), 0)::bigint
  FROM asset_types a
  LEFT JOIN (
      SELECT ac.asset_code, l.origin, mv.amount_minor, t.type, coalesce(t.created_at, mv.created_at) AS at,
             coalesce(t.created_at, mv.created_at) >= $2 AND coalesce(t.created_at, mv.created_at) < $3 AS in_period
        FROM lot_movements mv
        JOIN credit_lots l ON l.id = mv.lot_id
        JOIN accounts ac ON ac.id = l.account_id
        LEFT JOIN transactions t ON t.id = mv.transaction_id
  ) m ON m.asset_code = a.code
 GROUP BY a.code
 ORDER BY a.code
"""


# The daily volume by its definition: every entry on a user account, by its transaction's UTC day.
VOLUME_DEFINITION = """
SELECT (t.created_at AT TIME ZONE 'UTC')::date, a.asset_code,
       coalesce(sum(e.amount_minor) FILTER (WHERE e.amount_minor > 0), 0),
       coalesce(-sum(e.amount_minor) FILTER (WHERE e.amount_minor < 0), 0),
       count(DISTINCT e.transaction_id)
  FROM ledger_entries e
  JOIN accounts a ON a.id = e.account_id AND a.kind = 'user'
  JOIN transactions t ON t.id = e.transaction_id
 WHERE (t.created_at AT TIME ZONE 'UTC')::date >= $1
 GROUP BY 1, 2
 ORDER BY 1, 2
"""


def _settings(chunk: int, settle_ms: int = 0) -> Settings:
    return Settings(rollup_chunk_transactions=chunk, audit_settle_ms=settle_ms)


@pytest.fixture(scope="module")
async def three_days(create_migrated_database) -> str:
    """A bench ledger with PER_DAY loaded transactions on each of the last DAYS UTC days: the
    loader's postings, each day's written while the transactions' clock default was set back."""
    url: str = await create_migrated_database()
    await prepare_ledger(url, USERS)
    conn = await asyncpg.connect(url)
    try:
        now = await conn.fetchval("SELECT clock_timestamp()")
        midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        for back in range(DAYS - 1, -1, -1):
            # Noon of that day, or now for today: the day's postings cross no midnight.
            shift = now - (midnight - timedelta(days=back) + timedelta(hours=12)) if back else timedelta(0)
            await conn.execute(
                "ALTER TABLE transactions ALTER COLUMN created_at SET DEFAULT"
                f" clock_timestamp() - interval '{int(shift.total_seconds() * 1_000_000)} microseconds'"
            )
            await load_transactions(url, PER_DAY, users=USERS, chunk=20, connections=1, run=f"day{back}")
            # The loader's first posting is a top-up, its last a transfer without a fee, which
            # moves no total: one more top-up, so that each day's ends move the figures.
            await load_transactions(url, 1, users=USERS, chunk=1, connections=1, run=f"end{back}")
        await conn.execute("ALTER TABLE transactions ALTER COLUMN created_at SET DEFAULT clock_timestamp()")
        days = await conn.fetchval(
            "SELECT count(DISTINCT (created_at AT TIME ZONE 'UTC')::date) FROM transactions"
        )
        assert days >= DAYS
    finally:
        await conn.close()
    return url


async def _windows(
    conn: asyncpg.Connection, count: int, seed: int
) -> list[tuple[datetime, datetime, datetime]]:
    """(as_of, from, to) triples: at transactions' own times (each day's first and last among
    them), a microsecond either side, UTC midnights, before everything and after everything, mixed at random."""
    times = [r[0] for r in await conn.fetch("SELECT created_at FROM transactions ORDER BY random() LIMIT 40")]
    # Each day's first and last: where a window starts to cut a day's totals.
    day_ends = [
        tuple(r)
        for r in await conn.fetch(
            "SELECT min(created_at), max(created_at) FROM transactions GROUP BY (created_at AT TIME ZONE 'UTC')::date"
        )
    ]
    times += [t for ends in day_ends for t in ends]
    first, last = await conn.fetchrow("SELECT min(created_at), max(created_at) FROM transactions")
    midnights = [
        last.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=d)
        for d in range(DAYS + 1)
    ]
    tick = timedelta(microseconds=1)
    points = [*times, *(t + tick for t in times), *(t - tick for t in times), *midnights,
              first, last, first - timedelta(days=30), last + timedelta(days=30)]  # fmt: skip
    rng = random.Random(seed)
    windows = []
    for _ in range(count):
        a, b = sorted(rng.sample(points, 2))
        windows.append((rng.choice(points), a, b))
    # The report's default (the month so far, as of now) and windows of whole days.
    windows += [(last, midnights[-1], last), (last + tick, midnights[2], midnights[0])]
    for day_first, day_last in day_ends:  # a day just covered, and just cut at either end
        windows += [
            (day_last, day_first, day_last + tick),
            (day_last - tick, day_first, day_last),
            (day_first, day_first + tick, day_last + tick),
            (day_first - tick, day_first - tick, day_last),
        ]
    return windows


async def _assert_report_is_its_definition(conn: asyncpg.Connection, windows) -> None:
    """The liability report for each window, and the daily volume from each day on."""
    days = [
        r[0]
        for r in await conn.fetch("SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date FROM transactions")
    ]
    for first in [*days, min(days) - timedelta(days=1), max(days) + timedelta(days=1)]:
        volume = [tuple(r) for r in await conn.fetch("SELECT * FROM wallet_volume_per_day($1)", first)]
        assert volume == [tuple(r) for r in await conn.fetch(VOLUME_DEFINITION, first)], first
        assert first > max(days) or volume
    for as_of, from_, to in windows:
        report = [
            tuple(r)
            for r in await conn.fetch("SELECT * FROM wallet_liability_report($1, $2, $3)", as_of, from_, to)
        ]
        expected = [tuple(r) for r in await conn.fetch(DEFINITION, as_of, from_, to)]
        assert report == expected, (as_of, from_, to)


async def _copy(create_database, url: str) -> str:
    """A database of the test's own, copied from the ledger (nothing rolled up in it)."""
    copied: str = await create_database(template=urlsplit(url).path.lstrip("/"))
    return copied


async def test_the_report_is_its_definition_whatever_the_roll_up_has_reached(create_database, three_days):
    url = await _copy(create_database, three_days)
    conn = await asyncpg.connect(url)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        windows = await _windows(conn, 40, seed=18)
        assert await conn.fetchval("SELECT through_seq FROM rollup_checkpoint") == 0
        await _assert_report_is_its_definition(conn, windows)  # nothing rolled: every movement read

        # Part of the ledger: chunks of 97 transactions end in the middle of days.
        assert await conn.fetchval("SELECT wallet_roll_up(97, interval '0')") == 97
        assert await conn.fetchval("SELECT wallet_roll_up(97, interval '0')") == 97
        assert await conn.fetchval("SELECT through_seq FROM rollup_checkpoint") > 0
        await _assert_report_is_its_definition(conn, windows)

        total = await conn.fetchval("SELECT count(*) FROM transactions")
        rolled = await roll_up(pool, _settings(chunk=50))
        assert rolled == total - 2 * 97  # the rest, in chunks, until caught up
        assert await roll_up(pool, _settings(chunk=50)) == 0
        assert await conn.fetchval("SELECT through_seq FROM rollup_checkpoint") == await conn.fetchval(
            "SELECT max(seq) FROM transactions"
        )
        assert await conn.fetchval("SELECT count(*) FROM rollup_days") >= DAYS
        await _assert_report_is_its_definition(conn, windows)

        # Postings after the roll-up are read one by one until the next roll.
        await load_transactions(url, 40, users=USERS, chunk=20, connections=1, run="after")
        await _assert_report_is_its_definition(conn, await _windows(conn, 20, seed=20))
        # The totals are those of the movements and entries they roll up, to the unit.
        assert await conn.fetchval(
            """SELECT (SELECT sum(transactions) FROM volume_totals)
                      = (SELECT count(*) FROM transactions WHERE seq <= (SELECT through_seq FROM rollup_checkpoint))"""
        )
        assert await conn.fetchval(
            """SELECT (SELECT sum(amount_minor) FROM lot_flow_totals)
                      = (SELECT sum(mv.amount_minor) FROM lot_movements mv JOIN transactions t ON t.id = mv.transaction_id
                          WHERE t.seq <= (SELECT through_seq FROM rollup_checkpoint))"""
        )
    finally:
        await pool.close()
        await conn.close()


async def test_the_roll_up_takes_settled_transactions_only_and_each_once(create_database, three_days):
    url = await _copy(create_database, three_days)
    conn = await asyncpg.connect(url)
    pool = await asyncpg.create_pool(url, min_size=2, max_size=4)
    try:
        # Settled an hour: today's postings (the last day loaded) wait; the days before go, and the
        # roll stops at the first transaction not settled, whatever comes after it in seq.
        hour = _settings(chunk=100, settle_ms=3_600_000)
        rolled = await roll_up(pool, hour)
        first_recent = await conn.fetchval(
            "SELECT min(seq) FROM transactions WHERE created_at >= clock_timestamp() - interval '1 hour'"
        )
        assert rolled == await conn.fetchval("SELECT count(*) FROM transactions WHERE seq < $1", first_recent)
        assert await conn.fetchval("SELECT through_seq FROM rollup_checkpoint") == first_recent - 1

        # Two rollers at once, in small chunks: each transaction is counted once.
        small = _settings(chunk=7)
        counts = await asyncio.gather(roll_up(pool, small), roll_up(pool, small))
        assert await conn.fetchval("SELECT through_seq FROM rollup_checkpoint") == await conn.fetchval(
            "SELECT max(seq) FROM transactions"
        )
        assert rolled + sum(counts) + await roll_up(pool, small) == await conn.fetchval(
            "SELECT count(*) FROM transactions"
        )
        assert await conn.fetchval(
            "SELECT (SELECT sum(amount_minor) FROM lot_flow_totals) = (SELECT sum(amount_minor) FROM lot_movements"
            " WHERE transaction_id IS NOT NULL)"
        )
        await _assert_report_is_its_definition(conn, await _windows(conn, 20, seed=21))

        # `wallet verify` recomputes the totals: clean, and it names a total that is off.
        report = await verify_ledger(conn)
        assert report.clean, report.render()
        day = await conn.fetchval("SELECT max(day) FROM rollup_days")
        for table, column in (("lot_flow_totals", "amount_minor"), ("volume_totals", "credited_minor"),
                              ("rollup_days", "last_seq")):  # fmt: skip
            await conn.execute(f"UPDATE {table} SET {column} = {column} + 1 WHERE day = $1", day)
            report = await verify_ledger(conn)
            assert set(report.problems) == {ROLLUP}, report.render()
            assert all(day.isoformat() in problem for problem in report.problems[ROLLUP])
            await conn.execute(f"UPDATE {table} SET {column} = {column} - 1 WHERE day = $1", day)
        assert (await verify_ledger(conn)).clean
    finally:
        await pool.close()
        await conn.close()


async def test_a_roll_with_no_room_or_no_settling_time_is_refused(three_days):
    conn = await asyncpg.connect(three_days)
    try:
        for args in ("0, interval '0'", "NULL, interval '0'", "10, NULL"):
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.fetchval(f"SELECT wallet_roll_up({args})")
    finally:
        await conn.close()


async def test_the_workers_roll_up_while_postings_go_on_and_count_each_once(
    admin, pool, settings, database_url, make_user
):
    """Each worker of `wallet serve` runs the roll-up; here three do, every 50 ms, on pools of
    their own, while writers post: they keep up, and the totals are the movements they roll up."""
    users = [await make_user(GOLD_COINS=1_000) for _ in range(3)]
    worker = settings.model_copy(update={"rollup_interval_ms": 50, "rollup_chunk_transactions": 5})
    pools = [await create_pool(worker, database_url) for _ in range(3)]
    rollers = [asyncio.create_task(run_roller(p, worker)) for p in pools]
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        async with posting_without_pause(admin, users) as posted:
            while posted.count < 60:
                assert loop.time() < deadline, "the writers did not post"
                await asyncio.sleep(0.05)
        newest = await pool.fetchval("SELECT max(seq) FROM transactions")
        while await pool.fetchval("SELECT through_seq FROM rollup_checkpoint") < newest:
            assert loop.time() < deadline, "the rollers did not catch up"
            await asyncio.sleep(0.05)
        assert await pool.fetchval(
            """SELECT (SELECT coalesce(sum(amount_minor), 0) FROM lot_flow_totals)
                      = (SELECT coalesce(sum(mv.amount_minor), 0) FROM lot_movements mv
                           JOIN transactions t ON t.id = mv.transaction_id
                          WHERE t.seq <= (SELECT through_seq FROM rollup_checkpoint))"""
        )
    finally:
        for task in rollers:
            task.cancel()
        await asyncio.gather(*rollers, return_exceptions=True)
        for p in pools:
            await p.close()


async def test_wallet_roll_up_brings_the_totals_up_to_date_in_two_processes_at_once(
    create_database, three_days
):
    url = await _copy(create_database, three_days)
    env = os.environ | {
        "WALLET_DATABASE_URL": url,
        "WALLET_AUDIT_SETTLE_MS": "0",
        "WALLET_ROLLUP_CHUNK_TRANSACTIONS": "50",
    }
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "wallet", "roll-up"], env=env, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    conn = await asyncpg.connect(url)
    try:
        newest = await conn.fetchval("SELECT max(seq) FROM transactions")
        assert await conn.fetchval("SELECT through_seq FROM rollup_checkpoint") == newest
        # Each transaction counted once, whichever process rolled it up.
        assert sum(int(out.split("rolled up ")[1].split()[0]) for out in outputs) == await conn.fetchval(
            "SELECT count(*) FROM transactions"
        )
        assert all(f"up to seq {newest}" in out for out in outputs), outputs
        assert (await verify_ledger(conn)).clean
    finally:
        await conn.close()
