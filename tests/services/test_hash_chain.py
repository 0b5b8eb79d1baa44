"""Tamper evidence (issue 9): a hash chain per user account over its ledger entries.

Every posting path chains the entries it writes on user accounts; `wallet verify` recomputes each
link from the previous stored one and names the first broken link of each chain, so an edit made
behind the triggers by a superuser breaks exactly the edited transaction's links and no later ones.
System entries are not chained; verify checks that each is what its transaction implies.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.support import new_key, verify_books, wallet_on
from wallet.db.sql_files import read_sql
from wallet.services.audit import run_audit
from wallet.services.seed import seed_reference_data
from wallet.services.verify import verify_ledger
from wallet.settings import Settings

CHAIN_BROKEN = "hash chain broken (the first broken link of each account's chain)"
NOT_CHAINED = "ledger entry on a user account missing from its account's hash chain, or chained twice"
SYSTEM_ENTRY = "entry on a system account other than the one its transaction's type uses"

USER_CHAIN_SQL = """
SELECT c.chain_no, c.transaction_id, c.entry_no, c.link_sha256, t.seq
FROM ledger_chain_links c
JOIN accounts a ON a.id = c.account_id
JOIN transactions t ON t.id = c.transaction_id
WHERE a.user_id = $1 AND a.asset_code = $2
ORDER BY c.chain_no
"""


@dataclass
class Ledger:
    url: str
    ids: dict[str, uuid.UUID]  # what was posted, by name, in posting order


@pytest.fixture(scope="module")
async def ledger(create_migrated_database) -> Ledger:
    """A database of its own with every kind of posting for three users (alice, bob, carol)."""
    url = await create_migrated_database()
    conn = await asyncpg.connect(url)
    try:
        await seed_reference_data(conn)
        key_id = await conn.fetchval(
            "INSERT INTO api_keys (name, key_prefix, key_sha256, scopes)"
            " VALUES ('chain', 'wk_chain', sha256('chain'::bytea), '{admin}') RETURNING id"
        )
        for user in ("alice", "bob", "carol"):
            await conn.execute("SELECT wallet_ensure_user($1, $1)", user)
        ids: dict[str, uuid.UUID] = {}

        async def post(name: str, call: str, *args: Any) -> dict[str, Any]:
            row = await conn.fetchrow(f"SELECT outcome, body FROM {call}", key_id, f"chain-{name}", *args)
            assert row is not None and row["outcome"] in ("posted", "applied"), row
            body: dict[str, Any] = json.loads(row["body"])
            return body

        async def single(name: str, kind: str, user: str, amount: int, metadata: str = "{}") -> None:
            body = await post(
                name,
                "wallet_post_transaction($1, $2, $3, $4, 'GOLD_COINS', $5, $6, $7)",
                kind,
                user,
                amount,
                f"{kind} {name}",
                metadata,
            )
            ids[name] = uuid.UUID(body["id"])

        await single("alice_topup", "topup", "alice", 1000)
        await single("bob_topup", "topup", "bob", 500)
        await single("alice_spend", "spend", "alice", 100, '{"order": 1}')
        body = await post(
            "transfer",
            "wallet_post_transfer($1, $2, 'alice', 'bob', 'GOLD_COINS', 50, 2, 'gift', '{}')",
        )
        ids["transfer"] = uuid.UUID(body["id"])
        operations = [
            {"type": "topup", "user_id": "carol", "asset_type": "GOLD_COINS", "amount": 30},
            {"type": "spend", "user_id": "bob", "asset_type": "GOLD_COINS", "amount": 20},
            {
                "type": "transfer",
                "user_id": "bob",
                "to_user_id": "carol",
                "asset_type": "GOLD_COINS",
                "amount": 10,
            },
            {"type": "topup", "user_id": "alice", "asset_type": "GOLD_COINS", "amount": 5},
        ]
        body = await post("batch", "wallet_post_batch($1, $2, $3)", json.dumps(operations))
        for n, transaction in enumerate(body["transactions"]):
            ids[f"batch_{n}"] = uuid.UUID(transaction["id"])
        body = await post(
            "refund",
            "wallet_reverse_transaction($1, $2, $3, 40, 'partial refund', '{}', false)",
            ids["alice_spend"],
        )
        ids["refund"] = uuid.UUID(body["id"])
        hold = await post("hold", "wallet_place_hold($1, $2, 'alice', 'GOLD_COINS', 60, 3600, 'hold', '{}')")
        body = await post("capture", "wallet_capture_hold($1, $2, $3, 45, NULL, '{}')", uuid.UUID(hold["id"]))
        ids["capture"] = uuid.UUID(body["id"])
        await single("bob_spend", "spend", "bob", 7)
        body = await post(
            "clawback",
            "wallet_reverse_transaction($1, $2, $3, 10, 'clawback', '{}', false)",
            ids["bob_topup"],
        )
        ids["clawback"] = uuid.UUID(body["id"])
        await single("alice_late_topup", "topup", "alice", 3)
        await single("alice_late_spend", "spend", "alice", 1)
        await single("carol_topup", "topup", "carol", 9)
    finally:
        await conn.close()
    return Ledger(url, ids)


async def test_every_user_entry_is_chained_in_posting_order_and_verify_is_clean(ledger):
    report = await verify_books(ledger.url)
    assert report.clean, report.render()
    conn = await asyncpg.connect(ledger.url)
    try:
        user_entries = await conn.fetchval(
            "SELECT count(*) FROM ledger_entries e JOIN accounts a ON a.id = e.account_id WHERE a.kind = 'user'"
        )
        assert report.chain_links == user_entries
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM ledger_chain_links c JOIN accounts a ON a.id = c.account_id"
                " WHERE a.kind = 'system'"
            )
            == 0
        )
        for user, expected in (("alice", 8), ("bob", 6), ("carol", 3)):
            chain = await conn.fetch(USER_CHAIN_SQL, user, "GOLD_COINS")
            assert [r["chain_no"] for r in chain] == list(range(1, expected + 1))
            assert [r["seq"] for r in chain] == sorted(r["seq"] for r in chain)
            # Each link follows from the one before (verify's recurrence, recomputed here).
            previous = bytes(32)
            for row in chain:
                digest = await conn.fetchval(
                    "SELECT wallet_chain_digest(t, e.entry_no, e.account_id, e.asset_code, e.amount_minor)"
                    " FROM transactions t JOIN ledger_entries e ON e.transaction_id = t.id"
                    " WHERE t.id = $1 AND e.entry_no = $2",
                    row["transaction_id"],
                    row["entry_no"],
                )
                assert bytes(row["link_sha256"]) == hashlib.sha256(previous + bytes(digest)).digest()
                previous = bytes(row["link_sha256"])
        # The transfer is in both chains: the sender's entry 1 and the receiver's entry 2.
        transfer_links = await conn.fetch(
            "SELECT a.user_id, c.entry_no FROM ledger_chain_links c JOIN accounts a ON a.id = c.account_id"
            " WHERE c.transaction_id = $1 ORDER BY c.entry_no",
            ledger.ids["transfer"],
        )
        assert [tuple(r) for r in transfer_links] == [("alice", 1), ("bob", 2)]
    finally:
        await conn.close()


async def test_the_digest_is_the_documented_json_so_an_outside_auditor_can_recompute_a_link(ledger):
    """The first link of alice's chain, recomputed in Python from the documented format alone."""
    conn = await asyncpg.connect(ledger.url)
    try:
        t = await conn.fetchrow("SELECT * FROM transactions WHERE id = $1", ledger.ids["alice_topup"])
        entry = await conn.fetchrow(
            "SELECT entry_no, account_id, asset_code, amount_minor FROM ledger_entries"
            " WHERE transaction_id = $1 AND entry_no = 1",
            t["id"],
        )
        stored = await conn.fetchval(
            "SELECT link_sha256 FROM ledger_chain_links WHERE transaction_id = $1 AND entry_no = 1", t["id"]
        )
    finally:
        await conn.close()
    created_us = (t["created_at"] - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    content = [
        "wallet-chain-v1",
        str(t["id"]),
        t["type"],
        t["user_id"],
        t["asset_code"],
        t["amount_minor"],
        t["balance_after_minor"],
        t["description"],
        json.loads(t["metadata"]),
        created_us,
        t["api_key_id"],
        t["idempotency_key"],
        None,  # reverses
        None,  # counterparty_user_id
        None,  # counterparty_balance_after_minor
        0,  # fee_minor
        None,  # hold_id
        False,  # allow_negative
        entry["entry_no"],
        entry["account_id"],
        entry["asset_code"],
        entry["amount_minor"],
    ]
    # JSON as PostgreSQL prints it: ", " and ": " separators (metadata keys in jsonb's order, here
    # none), UTF-8.
    text = json.dumps(content, separators=(", ", ": "), ensure_ascii=False)
    digest = hashlib.sha256(text.encode()).digest()
    assert bytes(stored) == hashlib.sha256(bytes(32) + digest).digest()


async def test_the_migration_backfill_computes_the_links_the_posting_core_computed(create_database, ledger):
    """0006 chains an existing ledger in one statement; on this ledger (transfers, a batch, a
    reversal, a capture) it must give exactly the links the posting core wrote on the entries one
    posting at a time (the trigger of 0006 until migration 0015): the old formula, recomputed."""
    marker = "-- The entries written before this migration"
    script = read_sql("0006_hash_chain.sql")
    assert marker in script
    backfill = script[script.index(marker) :]
    copy = await create_database(template=urlsplit(ledger.url).path.lstrip("/"))
    conn = await asyncpg.connect(copy)
    try:
        by_core = await conn.fetch(
            "SELECT account_id, chain_no, transaction_id, entry_no, link_sha256 FROM ledger_entries"
            " WHERE chain_no IS NOT NULL ORDER BY account_id, chain_no"
        )
        await conn.execute("SET session_replication_role = replica")
        assert await conn.fetchval("SELECT count(*) FROM ledger_chain") == 0  # every link is on its entry
        await conn.execute(backfill)
        by_backfill = await conn.fetch("SELECT * FROM ledger_chain ORDER BY account_id, chain_no")
    finally:
        await conn.close()
    assert len(by_core) == 17
    assert [tuple(r) for r in by_backfill] == [tuple(r) for r in by_core]


# Edits only a superuser bypassing the triggers can make; each names the transaction it edits.
TAMPERING = {
    "metadata": (
        "alice_spend",
        "UPDATE transactions SET metadata = '{\"order\": 2}' WHERE id = $1",
    ),
    "amount": (
        "alice_spend",
        "UPDATE transactions SET amount_minor = 99 WHERE id = $1",
    ),
    "user_entry_amount": (
        "alice_spend",
        "UPDATE ledger_entries SET amount_minor = -90 WHERE transaction_id = $1 AND entry_no = 1",
    ),
    "transfer_description": (
        "transfer",
        "UPDATE transactions SET description = 'not a gift' WHERE id = $1",
    ),
}


async def _tampered_copy(create_database, ledger: Ledger, sql: str, *args: Any) -> str:
    copy: str = await create_database(template=urlsplit(ledger.url).path.lstrip("/"))
    conn = await asyncpg.connect(copy)
    try:
        await conn.execute("SET session_replication_role = replica")  # the append-only triggers are off
        status = await conn.execute(sql, *args)
        assert status.endswith(" 1"), status
    finally:
        await conn.close()
    return copy


@pytest.mark.parametrize("case", sorted(TAMPERING))
async def test_verify_names_exactly_the_edited_transaction(create_database, ledger, case):
    target, sql = TAMPERING[case]
    copy = await _tampered_copy(create_database, ledger, sql, ledger.ids[target])
    report = await verify_books(copy)
    rendered = report.render()
    assert not report.clean
    broken = report.problems[CHAIN_BROKEN]
    target_id = str(ledger.ids[target])
    if target == "transfer":
        # Its links in both chains (alice's 3rd, bob's 2nd), and nothing later in either.
        assert len(broken) == 2, rendered
        assert f"(alice GOLD_COINS): first broken link 3 of 8 is transaction {target_id} entry 1" in broken[0]
        assert f"(bob GOLD_COINS): first broken link 2 of 6 is transaction {target_id} entry 2" in broken[1]
    else:
        # alice's spend is the 2nd of her 8 links: the 6 after it still hold.
        assert len(broken) == 1, rendered
        assert f"(alice GOLD_COINS): first broken link 2 of 8 is transaction {target_id} entry 1" in broken[0]
    assert all("does not match the transaction and entry as stored now" in b for b in broken)
    assert all("(1 broken link(s) in this chain)" in b for b in broken)
    # No other transaction is named anywhere in the report: the later links still hold.
    for name, transaction_id in ledger.ids.items():
        if name != target:
            assert str(transaction_id) not in rendered, (name, rendered)
    assert NOT_CHAINED not in report.problems


# System entries are not chained: each is what its transaction implies, and verify checks that.
SYSTEM_ENTRY_MOVED = {
    # Balanced, every balance untouched: the revenue of a spend booked as promotions.
    "spend": "alice_spend",
    # A clawback of a top-up returns the credits to the treasury, not to promotions.
    "clawback": "clawback",
}


@pytest.mark.parametrize("case", sorted(SYSTEM_ENTRY_MOVED))
async def test_verify_names_a_transaction_whose_system_entry_was_moved(create_database, ledger, case):
    target = ledger.ids[SYSTEM_ENTRY_MOVED[case]]
    copy = await _tampered_copy(
        create_database,
        ledger,
        "UPDATE ledger_entries e SET account_id = p.id FROM accounts p"
        " WHERE e.transaction_id = $1 AND e.entry_no = 2"
        "   AND p.system_code = 'SYSTEM_PROMOTIONS' AND p.asset_code = 'GOLD_COINS'",
        target,
    )
    report = await verify_books(copy)
    (moved,) = report.problems[SYSTEM_ENTRY]
    assert f"transaction {target} (" in moved
    assert "entry 2 is on SYSTEM_PROMOTIONS GOLD_COINS, expected" in moved
    assert set(report.problems) == {SYSTEM_ENTRY}, report.render()


async def test_the_cli_reports_the_broken_link_and_fails(create_database, ledger):
    target, sql = TAMPERING["metadata"]
    copy = await _tampered_copy(create_database, ledger, sql, ledger.ids[target])
    result = wallet_on(copy, "verify")
    assert result.returncode == 1
    assert f"FAIL: {CHAIN_BROKEN} (1 shown" in result.stdout
    assert f"first broken link 2 of 8 is transaction {ledger.ids[target]} entry 1" in result.stdout
    print(result.stdout)  # shown with -s: the report an operator sees


async def test_a_removed_link_is_reported_as_a_gap_and_its_entry_as_unchained(create_database, ledger):
    target = ledger.ids["refund"]
    copy = await _tampered_copy(
        create_database,
        ledger,
        "UPDATE ledger_entries SET chain_no = NULL, link_sha256 = NULL"
        " WHERE transaction_id = $1 AND chain_no IS NOT NULL",
        target,
    )
    report = await verify_books(copy)
    (unchained,) = report.problems[NOT_CHAINED]
    assert f"transaction {target} entry 1" in unchained and unchained.endswith("not chained")
    # The refund was alice's 5th link: the capture, 6th, now follows the 4th.
    (gap,) = report.problems[CHAIN_BROKEN]
    assert f"first broken link 6 of 7 is transaction {ledger.ids['capture']} entry 1" in gap
    assert "the link before it is 4: links are missing" in gap


async def test_concurrent_postings_on_one_account_leave_one_unbroken_chain(admin, pool, make_user):
    """60 writes at once on one account through the app's pool (24 connections): top-ups, spends,
    transfers both ways and batches. The account's row lock orders them; the chain is 1..n."""
    user, other = await make_user(GOLD_COINS=10_000), await make_user(GOLD_COINS=10_000)

    async def write(n: int) -> int:
        kind = n % 6
        if kind in (0, 1):
            path, payload = (
                "topup" if kind == 0 else "spend",
                {"user_id": user, "asset_type": "GOLD_COINS", "amount": 3},
            )
        elif kind in (2, 3):
            sender, receiver = (user, other) if kind == 2 else (other, user)
            path = "transfer"
            payload = {
                "from_user_id": sender,
                "to_user_id": receiver,
                "asset_type": "GOLD_COINS",
                "amount": 2,
                "fee": 1,
            }
        else:
            path = "batch"
            payload = {
                "operations": [
                    {"type": "spend", "user_id": user, "asset_type": "GOLD_COINS", "amount": 1},
                    {"type": "topup", "user_id": other, "asset_type": "GOLD_COINS", "amount": 1},
                    {
                        "type": "transfer",
                        "user_id": other,
                        "to_user_id": user,
                        "asset_type": "GOLD_COINS",
                        "amount": 1,
                    },
                    {"type": "topup", "user_id": user, "asset_type": "GOLD_COINS", "amount": 2},
                ]
            }
        response = await admin.post(
            f"/api/v1/transactions/{path}", headers={"Idempotency-Key": new_key()}, json=payload
        )
        assert response.status_code == 201, response.text
        return response.status_code

    await asyncio.gather(*(write(n) for n in range(60)))
    for who in (user, other):
        chain = await pool.fetch(USER_CHAIN_SQL, who, "GOLD_COINS")
        entries = await pool.fetchval(
            "SELECT count(*) FROM ledger_entries e JOIN accounts a ON a.id = e.account_id"
            " WHERE a.user_id = $1 AND a.asset_code = 'GOLD_COINS'",
            who,
        )
        assert [r["chain_no"] for r in chain] == list(range(1, entries + 1))
        # Chain order is posting order (seq, assigned under the row lock), batches included.
        assert [(r["seq"], r["entry_no"]) for r in chain] == sorted((r["seq"], r["entry_no"]) for r in chain)
    # The opening top-up, 10 top-ups, 10 spends, 20 transfers and 20 batches of 3 legs on it.
    assert len(await pool.fetch(USER_CHAIN_SQL, user, "GOLD_COINS")) == 1 + 10 + 10 + 20 + 20 * 3
    async with pool.acquire() as conn:
        report = await verify_ledger(conn)
    assert CHAIN_BROKEN not in report.problems, report.render()
    assert NOT_CHAINED not in report.problems, report.render()


# Since migration 0015 the links are on the entries: what an edit of them looks like to `wallet
# verify` and to the live audit, and what the database refuses outright.
AUDIT_CHAIN = "hash chain broken after the last audited link"


async def _audit(url: str) -> dict[str, list[str]]:
    """An incremental audit run on a copy that was never audited: it checks every transaction."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        result = await run_audit(pool, Settings(database_url=url, audit_settle_ms=0))
    finally:
        await pool.close()
    return result.problems


async def test_the_database_refuses_a_user_entry_without_its_link_and_a_system_entry_with_one(
    create_database, ledger
):
    copy = await create_database(template=urlsplit(ledger.url).path.lstrip("/"))
    conn = await asyncpg.connect(copy)
    try:
        key_id = await conn.fetchval("SELECT id FROM api_keys WHERE name = 'chain'")
        alice, treasury = await conn.fetchrow(
            "SELECT (SELECT id FROM accounts WHERE user_id = 'alice' AND asset_code = 'GOLD_COINS'),"
            "       (SELECT id FROM accounts WHERE system_code = 'SYSTEM_TREASURY' AND asset_code = 'GOLD_COINS')"
        )
        statement = """
        WITH t AS (
            INSERT INTO transactions (type, api_key_id, idempotency_key, user_id, asset_code, amount_minor,
                                      balance_after_minor)
            VALUES ('topup', $1, 'by-hand', 'alice', 'GOLD_COINS', 5, 5) RETURNING id
        )
        INSERT INTO ledger_entries (transaction_id, entry_no, account_id, amount_minor, chain_no, link_sha256)
        SELECT t.id, e.entry_no, e.account_id, e.amount, e.chain_no, e.link FROM t,
               (VALUES (1::smallint, $2::bigint, 5::bigint, $4::bigint, $5::bytea),
                       (2::smallint, $3::bigint, -5::bigint, $6::bigint, $7::bytea))
                   AS e(entry_no, account_id, amount, chain_no, link)
        """
        link = hashlib.sha256(b"any").digest()
        for user_link, system_link in (((None, None), (None, None)), ((100, link), (1, link))):
            with pytest.raises(asyncpg.exceptions.CheckViolationError, match="has no hash-chain link"):
                await conn.execute(statement, key_id, alice, treasury, *user_link, *system_link)
        # A link comes with its number, 32 bytes long.
        with pytest.raises(asyncpg.exceptions.CheckViolationError, match="ledger_entries_link"):
            await conn.execute(statement, key_id, alice, treasury, 100, None, None, None)
        with pytest.raises(asyncpg.exceptions.CheckViolationError, match="ledger_entries_link"):
            await conn.execute(statement, key_id, alice, treasury, 100, b"short", None, None)
        # A second link of one number on one account (a fork) is refused by the index.
        head = await conn.fetchrow("SELECT chain_no, link_sha256 FROM wallet_chain_head($1)", alice)
        with pytest.raises(asyncpg.exceptions.UniqueViolationError, match="ledger_entries_chain"):
            await conn.execute(statement, key_id, alice, treasury, head["chain_no"], link, None, None)
    finally:
        await conn.close()


async def test_verify_and_the_audit_name_a_link_edited_on_its_entry(create_database, ledger):
    target = ledger.ids["alice_spend"]
    copy = await _tampered_copy(
        create_database,
        ledger,
        "UPDATE ledger_entries SET link_sha256 = sha256(link_sha256) WHERE transaction_id = $1 AND entry_no = 1",
        target,
    )
    report = await verify_books(copy)
    # The edited link (alice's 2nd) and the one after it, which no longer follows from it.
    (broken,) = report.problems[CHAIN_BROKEN]
    assert f"(alice GOLD_COINS): first broken link 2 of 8 is transaction {target} entry 1" in broken
    assert "(2 broken link(s) in this chain)" in broken
    assert NOT_CHAINED not in report.problems
    found = await _audit(copy)
    assert any(
        f"link 2 (transaction {target} entry 1): the stored link does not match" in p
        for p in found[AUDIT_CHAIN]
    ), found


async def test_the_audit_names_a_removed_link(create_database, ledger):
    target = ledger.ids["alice_late_spend"]  # alice's newest link: no later link shows the gap
    copy = await _tampered_copy(
        create_database,
        ledger,
        "UPDATE ledger_entries SET chain_no = NULL, link_sha256 = NULL WHERE transaction_id = $1 AND entry_no = 1",
        target,
    )
    (unchained,) = (await verify_books(copy)).problems[NOT_CHAINED]
    assert f"transaction {target} entry 1" in unchained and unchained.endswith("not chained")
    found = await _audit(copy)
    (missing,) = found[AUDIT_CHAIN]
    assert "7 link(s) for the 8 entries of the checked transactions on it" in missing, found


async def test_verify_and_the_audit_name_a_chain_number_stored_twice(create_database, ledger):
    """ledger_chain is closed since 0015: a link written there by hand (behind its trigger) that
    repeats a number of a chain on the entries is named by both."""
    target = ledger.ids["alice_spend"]
    copy = await _tampered_copy(
        create_database,
        ledger,
        "INSERT INTO ledger_chain SELECT account_id, chain_no, transaction_id, entry_no, link_sha256"
        " FROM ledger_entries WHERE transaction_id = $1 AND entry_no = 1",
        target,
    )
    conn = await asyncpg.connect(copy)
    try:
        with pytest.raises(asyncpg.exceptions.RestrictViolationError, match="ledger_chain is closed"):
            await conn.execute("INSERT INTO ledger_chain SELECT * FROM ledger_chain")
    finally:
        await conn.close()
    report = await verify_books(copy)
    (twice,) = report.problems[NOT_CHAINED]
    assert f"transaction {target} entry 1" in twice and twice.endswith("chained 2 times")
    (broken,) = report.problems[CHAIN_BROKEN]
    assert "(alice GOLD_COINS): first broken link 2 of 9" in broken
    found = await _audit(copy)
    assert any("9 link(s) for the 8 entries" in p for p in found[AUDIT_CHAIN]), found
