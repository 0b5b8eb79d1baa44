"""The live audit: incremental runs that check what changed since the last clean one, and find a
corrupted row; its gauges at /metrics."""

from __future__ import annotations

import asyncio
import re

import asyncpg

from tests.support import post, posting_without_pause
from wallet.db.pool import create_pool
from wallet.services.audit import _AUDIT_LOCK_KEY, run_audit, run_auditor
from wallet.services.verify import verify_ledger


async def _edit(pool, statement: str, *args) -> None:
    """An edit by hand, with the triggers that would refuse it off (as a superuser can)."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(statement, *args)


async def _gauges(admin) -> tuple[float, float]:
    text = (await admin.get("/metrics")).text
    consistent = re.search(r"^wallet_ledger_consistent (\S+)$", text, re.M)
    clean_at = re.search(r"^wallet_ledger_last_clean_audit_timestamp_seconds (\S+)$", text, re.M)
    assert consistent and clean_at, text[:500]
    return float(consistent.group(1)), float(clean_at.group(1))


async def _runs_counted(admin, result: str) -> float:
    text = (await admin.get("/metrics")).text
    found = re.search(rf'^wallet_audit_runs_total{{kind="incremental",result="{result}"}} (\S+)$', text, re.M)
    assert found, text[:500]
    return float(found.group(1))


async def test_each_run_checks_what_was_posted_since_the_last_clean_one(admin, pool, settings, make_user):
    await run_audit(pool, settings)  # whatever came before this test
    user = await make_user(GOLD_COINS=50)
    await post(admin, "spend", user_id=user, asset_type="GOLD_COINS", amount=20)
    first = await run_audit(pool, settings)
    assert first.consistent, first.problems
    newest = await pool.fetchval("SELECT max(seq) FROM transactions")
    assert first.to_seq == newest and first.from_seq < newest
    second = await run_audit(pool, settings)
    assert second.consistent and second.from_seq == second.to_seq == first.to_seq  # nothing new
    http = await admin.get("/api/v1/audit")
    assert http.status_code == 200, http.text
    body = http.json()
    assert body["kind"] == "incremental" and body["clean"] is True and body["counts"] is None
    consistent, clean_at = await _gauges(admin)
    assert consistent == 1.0 and clean_at >= second.finished_at.timestamp() - 1e-3


async def test_a_corrupted_balance_lot_or_entry_is_found_and_stays_found_until_repaired(
    admin, pool, settings, make_user
):
    user = await make_user(GOLD_COINS=30)
    spend = await post(admin, "spend", user_id=user, asset_type="GOLD_COINS", amount=10)
    assert (await run_audit(pool, settings)).consistent
    account_id = await pool.fetchval(
        "SELECT id FROM accounts WHERE user_id = $1 AND asset_code = 'GOLD_COINS'", user
    )
    corruptions = [
        (
            "UPDATE accounts SET balance_minor = balance_minor + 1 WHERE id = $1",
            "UPDATE accounts SET balance_minor = balance_minor - 1 WHERE id = $1",
            account_id,
            "cached user balance differs",
        ),
        (
            "UPDATE credit_lots SET remaining_minor = remaining_minor - 1 WHERE account_id = $1",
            "UPDATE credit_lots SET remaining_minor = remaining_minor + 1 WHERE account_id = $1",
            account_id,
            "open credit lots do not sum",
        ),
    ]
    for corrupt, repair, arg, check in corruptions:
        await pool.execute(corrupt, arg)
        found = await run_audit(pool, settings)
        assert not found.consistent and any(title.startswith(check) for title in found.problems), (
            found.problems
        )
        assert (await _gauges(admin))[0] == 0.0
        again = await run_audit(pool, settings)  # the checkpoint did not move past it
        assert not again.consistent and again.from_seq == found.from_seq
        await pool.execute(repair, arg)
        assert (await run_audit(pool, settings)).consistent
        assert (await _gauges(admin))[0] == 1.0

    # A lot movement of a transaction posted since the last clean run, edited with the triggers off.
    moved = await post(admin, "spend", user_id=user, asset_type="GOLD_COINS", amount=2)
    await _edit(
        pool,
        "UPDATE lot_movements SET amount_minor = amount_minor + 1 WHERE transaction_id = $1",
        moved["id"],
    )
    found = await run_audit(pool, settings)
    assert "a transaction's lot movements do not match its entry on a user account" in found.problems, (
        found.problems
    )
    async with pool.acquire() as conn:
        full = await verify_ledger(conn)
    assert "a transaction's lot movements do not match its entry on a user account" in full.problems
    await _edit(
        pool,
        "UPDATE lot_movements SET amount_minor = amount_minor - 1 WHERE transaction_id = $1",
        moved["id"],
    )
    assert (await run_audit(pool, settings)).consistent

    # An entry of a transaction posted since the last clean run, edited with the triggers off.
    await post(admin, "spend", user_id=user, asset_type="GOLD_COINS", amount=5)
    newest = await pool.fetchval(
        "SELECT id FROM transactions WHERE user_id = $1 ORDER BY seq DESC LIMIT 1", user
    )
    await _edit(
        pool,
        "UPDATE ledger_entries SET amount_minor = amount_minor - 1 WHERE transaction_id = $1 AND entry_no = 2",
        newest,
    )
    found = await run_audit(pool, settings)
    titles = set(found.problems)
    assert "transaction entries do not sum to zero, or fewer than two entries" in titles, titles
    assert "hash chain broken after the last audited link" not in titles  # a system entry is not chained
    await _edit(
        pool,
        "UPDATE ledger_entries SET amount_minor = amount_minor + 1 WHERE transaction_id = $1 AND entry_no = 2",
        newest,
    )
    assert (await run_audit(pool, settings)).consistent
    assert spend["type"] == "spend"


async def test_a_full_run_recomputes_everything(admin, pool, settings, make_user):
    await make_user(GOLD_COINS=5)  # something to recompute, whatever ran before in this database
    full = await admin.get("/api/v1/audit", params={"full": "true"})
    assert full.status_code == 200, full.text
    body = full.json()
    assert body["kind"] == "full" and body["clean"] and body["from_seq"] == 0
    newest = await pool.fetchval("SELECT max(seq) FROM transactions")
    assert body["to_seq"] == newest and body["counts"]["transactions"] > 0
    assert "OK: the books balance" in body["report"]


async def test_a_run_is_bounded_by_the_audit_limit_not_the_request_one(settings, database_url):
    """An audit run outlasts the request statement and lock timeouts of the pool it runs on: here
    it waits for another run holding the audit lock for longer than those, then completes. (With the
    request limit, one check slower than it failed every run, each with a longer range to do.)"""
    fast = settings.model_copy(update={"db_statement_timeout_ms": 300, "audit_query_timeout_ms": 30_000})
    pool = await create_pool(fast, database_url)
    holder = await asyncpg.connect(database_url)
    try:
        await holder.execute("BEGIN")
        await holder.execute("SELECT pg_advisory_xact_lock($1)", _AUDIT_LOCK_KEY)
        run = asyncio.create_task(run_audit(pool, fast))
        await asyncio.sleep(3.0)  # past the pool's command timeout (1.3 s) and lock timeout (2 s)
        assert not run.done()  # still waiting its turn, not failed
        await holder.execute("COMMIT")
        result = await asyncio.wait_for(run, 30)
        assert result.consistent, result.problems
        full = await run_audit(pool, fast, full=True)
        assert full.consistent, full.problems
    finally:
        await holder.close()
        await pool.close()


async def test_periodic_audits_of_several_workers_complete_clean_under_sustained_writes(
    admin, pool, settings, database_url, make_user
):
    """Each worker of `wallet serve` runs the periodic audit; here three do, on pools of their own,
    while writers post without pause. Every run completes and finds the books consistent, the
    last-clean-audit gauge keeps advancing and no run is counted as failed. (The runs had read in
    a repeatable-read transaction that also wrote the chain marks: a run that waited for another
    one's turn took its snapshot before that run committed, and its write of the same marks failed
    with SerializationError, run after run while the service was busy.)"""
    users = [await make_user(GOLD_COINS=1_000_000) for _ in range(4)]
    worker = settings.model_copy(update={"audit_interval_ms": 50})
    pools = [await create_pool(worker, database_url) for _ in range(3)]
    assert (await run_audit(pool, settings)).consistent  # whatever came before this test
    first_run = await pool.fetchval("SELECT coalesce(max(id), 0) FROM audit_runs")
    _, clean_before = await _gauges(admin)
    failed_before = await _runs_counted(admin, "failed")
    auditors = [asyncio.create_task(run_auditor(p, worker)) for p in pools]
    try:
        async with posting_without_pause(admin, users) as posted:
            # Writes go on until the runs have done what is asserted below (at least six, moving on
            # with the writes), which takes a few seconds; a run that stalls fails the deadline.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while posted.count <= 100 or await pool.fetchval(
                "SELECT count(*) < 6 OR count(DISTINCT to_seq) < 3 FROM audit_runs WHERE id > $1", first_run
            ):
                assert loop.time() < deadline, (posted.count, "the periodic audits did not keep up")
                await asyncio.sleep(0.1)
    finally:
        for task in auditors:
            task.cancel()
        await asyncio.gather(*auditors, return_exceptions=True)
        for p in pools:
            await p.close()
    runs = await pool.fetch(
        "SELECT consistent, problems::text, to_seq, finished_at FROM audit_runs WHERE id > $1 ORDER BY id",
        first_run,
    )
    assert posted.count > 100 and len(runs) >= 6, (posted.count, len(runs))
    assert all(run["consistent"] for run in runs), [run["problems"] for run in runs]
    assert len({run["to_seq"] for run in runs}) >= 3  # the runs moved on with the writes
    consistent, clean_after = await _gauges(admin)
    assert consistent == 1.0 and clean_after > clean_before
    assert clean_after >= runs[-1]["finished_at"].timestamp() - 1e-3
    assert await _runs_counted(admin, "failed") == failed_before
