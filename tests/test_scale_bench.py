"""Cost as the ledger grows (issue 20 item 5), at a small size through the same code as
`make scale-bench`: the fast loader writes real ledger rows that `wallet verify` passes, the
live audit catches up on the backlog in bounded chunks and resumes where it was stopped, and
the benchmark end to end (slow)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from tools.bench import prepare_ledger
from tools.scale_load import load_transactions

from wallet.services.audit import run_audit
from wallet.services.verify import verify_ledger
from wallet.settings import Settings

USERS = 40
LOADED = 3_000
CHUNK = 400


@pytest.fixture(scope="module")
async def loaded(create_migrated_database) -> str:
    """A bench ledger (40 users, openings audited) with 3,000 transactions loaded after it, its
    planner statistics those of the ledger before the load (as on a server without autovacuum)."""
    url: str = await create_migrated_database()
    await prepare_ledger(url, USERS)
    result = await load_transactions(url, LOADED, users=USERS, chunk=30, connections=2, run="test")
    assert result.transactions == LOADED and result.chunks == LOADED // 30
    return url


async def test_the_loaded_ledger_is_what_the_service_writes_and_verifies_clean(loaded):
    conn = await asyncpg.connect(loaded)
    try:
        counts = await conn.fetchrow(
            """
            SELECT (SELECT count(*) FROM transactions WHERE description = 'scale load') AS loaded,
                   (SELECT count(DISTINCT type) FROM transactions WHERE description = 'scale load') AS types,
                   (SELECT count(*) FROM transactions WHERE description = 'scale load' AND fee_minor > 0) AS fees,
                   (SELECT count(*) FROM events) AS events,
                   (SELECT count(*) FROM transactions) AS transactions,
                   (SELECT count(*) FROM credit_lots WHERE expires_at IS NOT NULL) AS expiring_lots,
                   (SELECT count(*) FROM lot_movements) AS movements
            """
        )
        assert counts["loaded"] == LOADED
        assert counts["types"] == 4 and counts["fees"] > 0  # top-ups, spends, bonuses, transfers
        assert counts["events"] == counts["transactions"]  # one transaction.posted event each
        assert counts["expiring_lots"] > 0 and counts["movements"] > LOADED
        # One snapshot on three connections, in chunks, as `wallet verify --jobs 3`.
        extra: list[asyncpg.Connection] = []

        async def connect() -> asyncpg.Connection:
            extra.append(await asyncpg.connect(loaded))
            return extra[-1]

        parallel = await verify_ledger(conn, connect=connect, jobs=3)
        single = await verify_ledger(conn)
    finally:
        await conn.close()
    assert parallel.clean and single.clean, parallel.render() + single.render()
    assert parallel.connections == 3 and len(extra) == 2 and all(c.is_closed() for c in extra)
    assert parallel.transactions == single.transactions == counts["transactions"]
    assert parallel.ledger_entries == single.ledger_entries > 2 * LOADED
    assert parallel.chain_links == single.chain_links
    assert parallel.system_balances == single.system_balances


async def test_the_audit_catches_up_in_bounded_chunks_and_resumes_where_it_was_stopped(
    create_database, loaded
):
    url = await create_database(template=urlsplit(loaded).path.lstrip("/"))
    settings = Settings(database_url=url, audit_settle_ms=0, audit_chunk_transactions=CHUNK)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        start = await pool.fetchval("SELECT max(to_seq) FROM audit_runs WHERE consistent")
        newest = await pool.fetchval("SELECT max(seq) FROM transactions")
        assert newest - start >= LOADED  # the loaded transactions are a backlog

        # Stopped midway, as a worker that is killed: the chunks it committed stay done.
        run = asyncio.create_task(run_audit(pool, settings, pause_ms=200))
        for _ in range(200):
            done = await pool.fetchval("SELECT count(*) FROM audit_runs WHERE from_seq >= $1", start)
            if done >= 2:
                break
            await asyncio.sleep(0.05)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        stopped_at = await pool.fetchval("SELECT max(to_seq) FROM audit_runs WHERE consistent")
        assert start < stopped_at < newest

        # Bounded by time (a request's budget): one chunk, then it says it is behind.
        short = await run_audit(pool, settings, max_run_ms=0)
        assert short.consistent and short.chunks == 1 and not short.caught_up
        assert short.from_seq == stopped_at and short.to_seq > stopped_at

        # The periodic run: from there to the newest transaction, chunk after chunk.
        rest = await run_audit(pool, settings)
        assert rest.consistent and rest.caught_up, rest.problems
        assert rest.from_seq == short.to_seq and rest.to_seq == newest and rest.chunks > 1

        runs = await pool.fetch(
            "SELECT from_seq, to_seq, consistent FROM audit_runs WHERE from_seq >= $1 ORDER BY id", start
        )
        assert all(r["consistent"] for r in runs)
        # Contiguous, each at most CHUNK transactions: nothing skipped, nothing checked twice.
        assert [r["from_seq"] for r in runs[1:]] == [r["to_seq"] for r in runs[:-1]]
        for r in runs:
            inside = await pool.fetchval(
                "SELECT count(*) FROM transactions WHERE seq > $1 AND seq <= $2", r["from_seq"], r["to_seq"]
            )
            assert inside <= CHUNK
        assert runs[0]["from_seq"] == start and runs[-1]["to_seq"] == newest
        # The touched accounts' chains were checked up to their newest link.
        behind = await pool.fetchval(
            """
            SELECT count(*) FROM accounts a
             CROSS JOIN LATERAL (SELECT max(c.chain_no) AS head FROM ledger_chain_links c WHERE c.account_id = a.id) c
              LEFT JOIN audit_chain_marks k ON k.account_id = a.id
             WHERE a.kind = 'user' AND c.head IS NOT NULL AND k.chain_no IS DISTINCT FROM c.head
            """
        )
        assert behind == 0
    finally:
        await pool.close()


async def test_a_problem_found_midway_keeps_the_whole_run_to_check_again(create_database, loaded):
    url = await create_database(template=urlsplit(loaded).path.lstrip("/"))
    settings = Settings(database_url=url, audit_settle_ms=0, audit_chunk_transactions=CHUNK)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        start = await pool.fetchval("SELECT max(to_seq) FROM audit_runs WHERE consistent")
        # An entry edited behind the triggers in the backlog's fourth chunk.
        target = await pool.fetchval(
            "SELECT id FROM transactions WHERE seq > $1 ORDER BY seq OFFSET $2 LIMIT 1", start, 3 * CHUNK + 5
        )
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(
                "UPDATE ledger_entries SET amount_minor = amount_minor + 1 WHERE transaction_id = $1 AND entry_no = 2",
                target,
            )
        found = await run_audit(pool, settings)
        assert not found.consistent and found.chunks == 4 and found.from_seq == start
        assert any(
            str(target) in p
            for p in found.problems["transaction entries do not sum to zero, or fewer than two entries"]
        )
        again = await run_audit(pool, settings)
        assert not again.consistent and again.from_seq == start  # the checkpoint did not move past it
    finally:
        await pool.close()


@pytest.mark.slow
def test_scale_bench_prints_the_same_run_table(server_url, tmp_path: Path):
    if not shutil.which("wrk"):
        pytest.skip("wrk not installed (make bench-deps)")
    if "host=" in server_url:
        pytest.skip("the benchmark needs a TCP PostgreSQL server (WALLET_TEST_DATABASE_URL)")
    name = f"wallet_test_scale_{uuid.uuid4().hex[:10]}"
    output = tmp_path / "scale.json"
    result = subprocess.run(
        [sys.executable, "-m", "tools.scale_bench", "--database-url", server_url, "--transactions", "2000",
         "--users", "30", "--seconds", "1", "--rounds", "1", "--clients", "2", "--load-chunk", "20",
         "--scratch-database", name, "--output", str(output)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["load"]["transactions"] == 2000
    assert report["loaded"]["verify_clean"] and report["empty"]["verify_clean"]
    assert report["loaded"]["transactions"] == report["empty"]["transactions"] + 2000
    assert report["loaded"]["audit_backlog"] >= 2000 and report["loaded"]["audit_chunks"] >= 1
    assert all(
        report[side]["hot"][s]
        for side in ("empty", "loaded")
        for s in ("topup", "spend", "balance", "history")
    )
    assert "| topup /s" in result.stdout and "| wallet verify s |" in result.stdout
