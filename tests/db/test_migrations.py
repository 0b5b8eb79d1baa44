"""Migrations keep what was stored: an idempotent response written by the previous version (which
stored HTTP statuses) replays byte for byte, with its status, after upgrading to head; and the
ledger written before the hash chain is chained by the upgrade, and chains stored in ledger_chain
go on, unbroken, on the entries after 0015."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys

import asyncpg
import httpx
import pytest

from tests.support import bearer
from wallet.api.app import create_app
from wallet.db.migrate import upgrade, upgrade_to_head_async
from wallet.services.audit import run_audit
from wallet.services.seed import seed_reference_data
from wallet.services.verify import verify_ledger
from wallet.settings import Settings

OLD_POST = (
    "SELECT status_code, body::text AS body FROM wallet_post_transaction("
    "$1, $2, $3, 'user_old', 'GOLD_COINS', $4, NULL, '{}'::jsonb)"
)


async def test_responses_stored_by_revision_0001_replay_unchanged_after_upgrade(create_database):
    url = await create_database()
    await asyncio.to_thread(upgrade, url, "0001")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT wallet_ensure_asset('GOLD_COINS', 'Gold Coins', 0::smallint)")
        await conn.execute("SELECT wallet_ensure_user('user_old', 'Old')")
        # The key as revision 0001 stored it (today's create_api_key writes newer columns).
        token = "wk_old-client-" + "x" * 30
        await conn.execute(
            "INSERT INTO api_keys (name, key_prefix, key_sha256, scopes) VALUES ($1, $2, sha256($3), $4)",
            "old-client",
            token[:11],
            token.encode(),
            ["admin"],
        )
        key_id = await conn.fetchval("SELECT id FROM api_keys WHERE name = 'old-client'")
        old_topup = await conn.fetchrow(OLD_POST, key_id, "old-topup", "topup", 70)
        old_spend = await conn.fetchrow(OLD_POST, key_id, "old-spend", "spend", 500)
        assert (old_topup["status_code"], old_spend["status_code"]) == (201, 409)
    finally:
        await conn.close()

    await upgrade_to_head_async(url)

    app = create_app(Settings(database_url=url, db_pool_min_size=1, db_pool_max_size=2, auth_cache_ttl_ms=0))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://wallet.test", headers=bearer(token)
        ) as client,
    ):
        for key, path, amount, old, status in (
            ("old-topup", "topup", 70, old_topup, 201),
            ("old-spend", "spend", 500, old_spend, 409),
        ):
            response = await client.post(
                f"/api/v1/transactions/{path}",
                headers={"Idempotency-Key": key},
                json={"user_id": "user_old", "asset_type": "GOLD_COINS", "amount": amount},
            )
            assert response.status_code == status
            assert response.headers["Idempotent-Replayed"] == "true"
            assert response.content == old["body"].encode()
        # And the ledger kept working across the upgrade: the balance is the old top-up's.
        balance = await client.get("/api/v1/wallets/user_old/balance")
        assert balance.json()["balances"][0]["balance"] == 70

    # Migration 0006 chained the entries written before it, and new postings extend that chain
    # (since 0015 on the entries themselves: the old link stays in ledger_chain).
    conn = await asyncpg.connect(url)
    try:
        posted = await conn.fetchval(
            "SELECT outcome FROM wallet_post_transaction($1, 'new-topup', 'topup', 'user_old', 'GOLD_COINS',"
            " 5, NULL, '{}'::jsonb)",
            key_id,
        )
        assert posted == "posted"
        chain = await conn.fetch(
            "SELECT c.chain_no, t.idempotency_key FROM ledger_chain_links c"
            " JOIN transactions t ON t.id = c.transaction_id ORDER BY c.chain_no"
        )
        assert [tuple(r) for r in chain] == [(1, "old-topup"), (2, "new-topup")]
        report = await verify_ledger(conn)
        assert report.clean, report.render()
    finally:
        await conn.close()


# A top-up, bonus or spend as 0001's posting function takes it (it answered a status code).
POSTING_OF_0001 = (
    "SELECT status_code FROM wallet_post_transaction($1, $2, $3, $4, 'GOLD_COINS', $5, NULL, '{}'::jsonb)"
)


async def _ledger_at_0001(url: str, users: tuple[str, ...], postings: list[tuple[str, str, str, int]]) -> int:
    """The database at migration 0001 with Gold Coins, `users`, an admin API key (its id returned)
    and `postings` (idempotency key, type, user, amount), each posted by 0001's posting function."""
    await asyncio.to_thread(upgrade, url, "0001")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT wallet_ensure_asset('GOLD_COINS', 'Gold Coins', 0::smallint)")
        for user in users:
            await conn.execute("SELECT wallet_ensure_user($1, 'Old')", user)
        await conn.execute(
            "INSERT INTO api_keys (name, key_prefix, key_sha256, scopes) VALUES ('old', 'wk_old', sha256('x'), '{admin}')"
        )
        key_id = await conn.fetchval("SELECT id FROM api_keys WHERE name = 'old'")
        for key, type_, user, amount in postings:
            assert await conn.fetchval(POSTING_OF_0001, key_id, key, type_, user, amount) == 201
    finally:
        await conn.close()
    return key_id


async def test_balances_from_before_lots_become_opening_lots(create_database):
    """Migration 0009: what a user holds when lots arrive is one lot per origin, purchased first
    (up to the net top-ups), with no expiry; the books verify and new postings draw from them."""
    url = await create_database()
    key_id = await _ledger_at_0001(
        url,
        ("user_paid", "user_given"),
        [
            ("a1", "topup", "user_paid", 100), ("a2", "bonus", "user_paid", 50), ("a3", "spend", "user_paid", 60),
            ("b1", "topup", "user_given", 10), ("b2", "bonus", "user_given", 40), ("b3", "spend", "user_given", 5),
        ],
    )  # fmt: skip

    await upgrade_to_head_async(url)

    conn = await asyncpg.connect(url)
    try:
        lots = await conn.fetch(
            "SELECT a.user_id, l.origin, l.remaining_minor, l.expires_at FROM credit_lots l"
            " JOIN accounts a ON a.id = l.account_id ORDER BY a.user_id, l.origin"
        )
        assert [tuple(r) for r in lots] == [
            ("user_given", "granted", 35, None),
            ("user_given", "purchased", 10, None),
            ("user_paid", "purchased", 90, None),
        ]
        report = await verify_ledger(conn)
        assert report.clean, report.render()
        spent = await conn.fetchrow(
            "SELECT outcome, body FROM wallet_post_transaction($1, 'new', 'spend', 'user_given', 'GOLD_COINS',"
            " 40, NULL, '{}'::jsonb)",
            key_id,
        )
        assert spent["outcome"] == "posted"
        drawn = [(lot["origin"], lot["amount"]) for lot in json.loads(spent["body"])["lots"]]
        assert drawn == [("granted", -35), ("purchased", -5)]
        assert (await verify_ledger(conn)).clean
        # A clawback of a credit from before lots takes its origin's opening lot, and no other:
        # user_paid's bonus counts as spent (the opening lots are purchased first), and its top-up
        # takes purchased credits, not the granted ones of a bonus given since.
        reverse = "SELECT outcome, body FROM wallet_reverse_transaction($1, $2, $3, $4, NULL, '{}', false)"
        original = "SELECT id FROM transactions WHERE idempotency_key = $1"
        bonus = await conn.fetchrow(reverse, key_id, "c1", await conn.fetchval(original, "a2"), None)
        assert bonus["outcome"] == "amount_exceeds_clawable", bonus["body"]
        given = await conn.fetchval(
            POSTING_OF_0001.replace("status_code", "outcome"), key_id, "a4", "bonus", "user_paid", 20
        )
        assert given == "posted"
        topup = await conn.fetchrow(reverse, key_id, "c2", await conn.fetchval(original, "a1"), 30)
        assert topup["outcome"] == "posted", topup["body"]
        drawn = [(lot["origin"], lot["amount"]) for lot in json.loads(topup["body"])["lots"]]
        assert drawn == [("purchased", -30)]
        assert (await verify_ledger(conn)).clean
    finally:
        await conn.close()


MIGRATION_LOCK = "SELECT pg_advisory_lock(1464682823, 1)"  # wallet.db.migrations.env's (space, id)
UPGRADE = "import sys; from wallet.db.migrate import upgrade_to_head; upgrade_to_head(sys.argv[1])"


async def test_three_processes_migrating_a_new_database_at_once_all_succeed(create_database):
    """Three containers (or Railway replicas) starting together each run `wallet migrate` on a new
    database. Without the migration lock two of them failed (UniqueViolation, UndefinedObject).
    Here the test holds the lock until all three processes wait on it, so they start at once."""
    url = await create_database()
    holder = await asyncpg.connect(url)
    procs: list[asyncio.subprocess.Process] = []
    try:
        await holder.execute(MIGRATION_LOCK)
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                UPGRADE,
                url,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            for _ in range(3)
        ]
        waiting = 0
        for _ in range(600):  # each process starts Python and alembic first: a few seconds
            waiting = await holder.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database ="
                " (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            if waiting == 3:
                break
            await asyncio.sleep(0.05)
        assert waiting == 3, "the three migrations never waited on the migration lock"
    finally:
        await holder.close()  # releases the lock: the three go, one after another
    outputs = [(await proc.communicate())[0].decode() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], "\n".join(outputs)

    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM alembic_version") == 1
        await seed_reference_data(conn)
        assert (await verify_ledger(conn)).clean
    finally:
        await conn.close()


CHAIN_SQL = """
SELECT c.chain_no, c.link_sha256, c.transaction_id, c.entry_no, e.chain_no AS on_entry,
       wallet_chain_digest(t, e.entry_no, e.account_id, e.asset_code, e.amount_minor) AS digest
  FROM ledger_chain_links c
  JOIN accounts a ON a.id = c.account_id
  JOIN ledger_entries e ON e.transaction_id = c.transaction_id AND e.entry_no = c.entry_no
  JOIN transactions t ON t.id = c.transaction_id
 WHERE a.user_id = $1 AND a.asset_code = 'GOLD_COINS'
 ORDER BY c.chain_no
"""


async def test_chains_in_ledger_chain_go_on_on_the_entries_after_0015(create_database):
    """Migration 0015: links written before it stay in ledger_chain, untouched; each account's
    next link is on its entry, numbered on from the last old one and computed from it by the old
    formula; `wallet verify` and the live audit (a first run over everything, then one over a new
    posting) are clean across the boundary."""
    url = await create_database()
    key_id = await _ledger_at_0001(
        url,
        ("user_a", "user_b"),
        [("a1", "topup", "user_a", 100), ("a2", "spend", "user_a", 30), ("b1", "topup", "user_b", 10), ("a3", "topup", "user_a", 5)],
    )  # fmt: skip
    await asyncio.to_thread(upgrade, url, "0014")  # 0006 chains them into ledger_chain
    conn = await asyncpg.connect(url)
    try:
        old_links = [
            tuple(r) for r in await conn.fetch("SELECT * FROM ledger_chain ORDER BY account_id, chain_no")
        ]
        assert len(old_links) == 4
    finally:
        await conn.close()

    await upgrade_to_head_async(url)

    conn = await asyncpg.connect(url)
    try:
        # History untouched: the same rows, no link copied onto an old entry.
        assert [
            tuple(r) for r in await conn.fetch("SELECT * FROM ledger_chain ORDER BY account_id, chain_no")
        ] == (old_links)
        assert await conn.fetchval("SELECT count(*) FROM ledger_entries WHERE chain_no IS NOT NULL") == 0
        with pytest.raises(asyncpg.exceptions.RestrictViolationError, match="closed"):
            await conn.execute("INSERT INTO ledger_chain SELECT account_id, chain_no + 100, transaction_id,"
                               " entry_no, link_sha256 FROM ledger_chain")  # fmt: skip
        await seed_reference_data(conn)
        posted = (
            "SELECT outcome FROM wallet_post_transaction($1, $2, $3, $4, 'GOLD_COINS', $5, NULL, '{}'::jsonb)"
        )
        for key, type_, user, amount in [
            ("a4", "spend", "user_a", 1), ("b2", "topup", "user_b", 2), ("a5", "topup", "user_a", 3),
            ("c1", "topup", "user_c", 4),
        ]:  # fmt: skip
            if user == "user_c":
                await conn.execute("SELECT wallet_ensure_user($1, 'New')", user)
            assert await conn.fetchval(posted, key_id, f"new-{key}", type_, user, amount) == "posted"
        for user, old, new in (("user_a", 3, 2), ("user_b", 1, 1), ("user_c", 0, 1)):
            chain = await conn.fetch(CHAIN_SQL, user)
            assert [r["chain_no"] for r in chain] == list(range(1, old + new + 1))
            # The old links in ledger_chain, the new ones on their entries.
            assert [r["on_entry"] for r in chain] == [None] * old + list(range(old + 1, old + new + 1))
            # Every link, old and new, is link(n - 1) ++ digest by the formula of 0006.
            previous = bytes(32)
            for row in chain:
                assert bytes(row["link_sha256"]) == hashlib.sha256(previous + bytes(row["digest"])).digest()
                previous = bytes(row["link_sha256"])
        report = await verify_ledger(conn)
        assert report.clean, report.render()
        assert report.chain_links == 4 + 4
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        settings = Settings(database_url=url, audit_settle_ms=0)
        # A first incremental run checks everything, old links and new in the same chunk.
        first = await run_audit(pool, settings)
        assert first.consistent and first.from_seq == 0, first.problems
        await pool.fetchval(
            "SELECT outcome FROM wallet_post_transaction($1, 'new-a6', 'spend', 'user_a', 'GOLD_COINS', 2, NULL, '{}')",
            key_id,
        )
        incremental = await run_audit(pool, settings)
        assert incremental.consistent, incremental.problems
        assert (
            await pool.fetchval(
                "SELECT k.chain_no FROM audit_chain_marks k JOIN accounts a ON a.id = k.account_id"
                " WHERE a.user_id = 'user_a'"
            )
            == 6
        )
    finally:
        await pool.close()
