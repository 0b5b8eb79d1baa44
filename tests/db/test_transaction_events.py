"""A posted transaction's event references its transaction by id (events.transaction_id, migration
0017), written by the posting core in the statement that inserts the transaction: every kind of
posting writes exactly one event per transaction; the feed serves the same document whichever
way the event was stored (a whole copy before 0013, {"id": ...} from 0013 to 0017, the column
since), across the upgrade too; the table refuses malformed rows."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from tests.support import new_key, refused_by_check, wait_past
from wallet.db.migrate import downgrade, upgrade_to_head_async
from wallet.db.sql_files import function_files
from wallet.services.api_keys import create_api_key
from wallet.services.events import read_events
from wallet.services.group_commit import GroupCommitter, Write
from wallet.services.seed import seed_reference_data

# An event's payload as the feed serves it, beside the document of the transaction it is about.
SERVED_SQL = """
SELECT e.seq, e.payload IS NULL AS by_column, t.id::text AS transaction_id,
       wallet_event_payload(e.type, e.payload, e.transaction_id)::text AS served,
       wallet_transaction_event_payload(t)::text AS document
  FROM events e
  JOIN transactions t ON t.id = coalesce(e.transaction_id, (e.payload ->> 'id')::uuid)
 WHERE e.type = 'transaction.posted'
 ORDER BY e.txid, e.seq
"""

POST_SQL = (
    "SELECT outcome, body->>'id' AS id FROM wallet_post_transaction("
    "$1, $2, $3, $4, 'GOLD_COINS', $5, $6, $7::jsonb)"
)


async def _post(conn: asyncpg.Connection, key_id: int, kind: str, user: str, amount: int) -> str:
    row = await conn.fetchrow(POST_SQL, key_id, new_key(), kind, user, amount, f"{kind} {amount}", '{"n": 1}')
    assert row is not None and row["outcome"] == "posted", row
    return str(row["id"])


async def _created(admin: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await admin.post(path, headers={"Idempotency-Key": new_key()}, json=body)
    assert response.status_code == 201, response.text
    document: dict[str, Any] = response.json()
    return document


async def test_every_kind_of_posting_writes_one_event_per_transaction(admin, pool, make_user):
    alice, bob = await make_user(GOLD_COINS=100), await make_user()  # single: a top-up
    single = await _created(
        admin, "/api/v1/transactions/spend", {"user_id": alice, "asset_type": "GOLD_COINS", "amount": 7}
    )
    key_id = await pool.fetchval("SELECT id FROM api_keys WHERE name = 'test-admin'")
    group = [Write(key_id, new_key(), "topup", bob, "GOLD_COINS", amount, None, "{}") for amount in (3, 4, 5)]
    outcomes = await GroupCommitter(pool, max_size=len(group), max_in_flight=1)._post_group(group)
    assert [r["outcome"] for r in outcomes] == ["posted"] * 3
    batch = await _created(
        admin,
        "/api/v1/transactions/batch",
        {
            "operations": [
                {"type": "bonus", "user_id": bob, "asset_type": "GOLD_COINS", "amount": 2},
                {"type": "spend", "user_id": alice, "asset_type": "GOLD_COINS", "amount": 1},
            ]
        },
    )
    assert len(batch["transactions"]) == 2
    await _created(
        admin,
        "/api/v1/transactions/transfer",
        {"from_user_id": alice, "to_user_id": bob, "asset_type": "GOLD_COINS", "amount": 10, "fee": 1},
    )
    await _created(admin, f"/api/v1/transactions/{single['id']}/reverse", {"amount": 7})
    hold = await _created(
        admin, "/api/v1/holds", {"user_id": alice, "asset_type": "GOLD_COINS", "amount": 20}
    )
    await _created(admin, f"/api/v1/holds/{hold['id']}/capture", {"amount": 15})
    bonus = await _created(
        admin,
        "/api/v1/transactions/bonus",
        {"user_id": bob, "asset_type": "GOLD_COINS", "amount": 6, "expires_in_seconds": 1},
    )
    assert bonus["lots"][0]["expires_at"] is not None
    await wait_past(pool, datetime.fromisoformat(bonus["lots"][0]["expires_at"]))
    expired = await pool.fetchval(
        "SELECT wallet_expire_lots(a.id) FROM accounts a WHERE a.user_id = $1 AND a.asset_code = 'GOLD_COINS'",
        bob,
    )
    assert expired == 6

    rows = await pool.fetch(
        "SELECT t.type, t.seq,"
        "       (SELECT count(*) FROM events e WHERE e.transaction_id = t.id) AS by_column,"
        "       (SELECT count(*) FROM events e WHERE e.payload ->> 'id' = t.id::text) AS by_payload,"
        "       (SELECT min(e.seq) FROM events e WHERE e.transaction_id = t.id) AS event_seq,"
        "       (SELECT min(e.txid::text) FROM events e WHERE e.transaction_id = t.id) AS event_txid"
        "  FROM transactions t WHERE t.user_id = ANY ($1::text[]) ORDER BY t.seq",
        [alice, bob],
    )
    kinds = {r["type"] for r in rows}
    assert {"topup", "spend", "bonus", "transfer", "refund", "capture", "expiry"} <= kinds, kinds
    assert len(rows) == 12  # 1 + 1 + 3 + 2 + 1 + 1 + 1 + 1 + 1: the transfer is its sender's
    assert [(r["by_column"], r["by_payload"]) for r in rows] == [(1, 0)] * len(rows)
    # Within a database transaction the events follow the transactions' order (the group's three
    # and the batch's two, each group in one database transaction).
    by_txid: dict[str, list[int]] = {}
    for r in rows:
        by_txid.setdefault(r["event_txid"], []).append(r["event_seq"])
    assert all(seqs == sorted(seqs) for seqs in by_txid.values())
    assert sorted(len(seqs) for seqs in by_txid.values())[-2:] == [2, 3]


async def test_each_stored_form_of_a_transaction_event_is_served_as_the_same_document(pool, make_user):
    user = await make_user(GOLD_COINS=50)
    key_id = await pool.fetchval("SELECT id FROM api_keys WHERE name = 'test-admin'")
    async with pool.acquire() as conn:
        transaction_id = await _post(conn, key_id, "spend", user, 12)
        transaction = conn.transaction()
        await transaction.start()
        try:
            # The two forms written before 0017, for the same transaction (rolled back below: the
            # feed keeps one event per transaction).
            await conn.execute(
                "INSERT INTO events (type, payload) VALUES ('transaction.posted', jsonb_build_object('id', $1::uuid))",
                transaction_id,
            )
            await conn.execute(
                "INSERT INTO events (type, payload) SELECT 'transaction.posted', wallet_transaction_event_payload(t)"
                " FROM transactions t WHERE t.id = $1",
                transaction_id,
            )
            rows = await conn.fetch(
                "SELECT e.payload IS NULL AS by_column, e.payload ? 'type' AS copy,"
                "       wallet_event_payload(e.type, e.payload, e.transaction_id)::text AS served"
                "  FROM events e"
                " WHERE e.transaction_id = $1 OR e.payload ->> 'id' = $1::text ORDER BY e.txid, e.seq",
                transaction_id,
            )
            document = await conn.fetchval(
                "SELECT wallet_transaction_event_payload(t)::text FROM transactions t WHERE t.id = $1",
                transaction_id,
            )
            # Other payloads are served as stored: an event of a hold, a payload that is not an id alone.
            as_stored = await conn.fetch(
                "SELECT wallet_event_payload(x.type, x.payload, NULL)::text AS served, x.payload::text AS stored"
                "  FROM (VALUES ('hold.placed', jsonb_build_object('id', $1::uuid)),"
                "               ('transaction.posted', jsonb_build_object('id', $1::uuid, 'n', 1)),"
                "               ('transaction.posted', '{\"id\": \"not-a-uuid\"}'::jsonb)) AS x(type, payload)",
                transaction_id,
            )
            missing = await conn.fetchval(
                "SELECT wallet_event_payload('transaction.posted', NULL, '00000000-0000-7000-8000-000000000000')::text"
            )
        finally:
            await transaction.rollback()
    assert [(r["by_column"], r["copy"]) for r in rows] == [(True, None), (False, False), (False, True)]
    assert [r["served"] for r in rows] == [document] * 3
    assert orjson.loads(document)["id"] == transaction_id and orjson.loads(document)["amount"] == 12
    assert [r["served"] for r in as_stored] == [r["stored"] for r in as_stored]
    assert missing == '{"id": "00000000-0000-7000-8000-000000000000"}'


async def test_the_feed_across_the_upgrade_serves_every_form_alike_and_in_order(create_database):
    """Events written at head, then by 0016's trigger (after a downgrade, with 0016's posting
    core), then at head again after the upgrade: one feed, in posting order, every document that of
    its transaction; the downgrade gave the events written by reference the payload 0016 wrote."""
    url = await create_database()
    await upgrade_to_head_async(url)
    conn = await asyncpg.connect(url)
    try:
        await seed_reference_data(conn)
        await create_api_key(conn, "boundary", ["admin"])
        key_id = await conn.fetchval("SELECT id FROM api_keys WHERE name = 'boundary'")
        await conn.execute("SELECT wallet_ensure_user('u_boundary', 'Boundary')")
        posted = [await _post(conn, key_id, "topup", "u_boundary", 40)]
    finally:
        await conn.close()

    await asyncio.to_thread(downgrade, url, "0016")
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT payload->>'id' FROM events") == posted[0]
        # 0016's posting core: today's without the statement's own events (0016's trigger wrote
        # them) and without dropping that trigger.
        core = next(sql for sql in function_files() if "FUNCTION wallet_post(" in sql)
        core_of_0016, found = re.subn(
            r"\n    \), posted_events AS \(\n.*?ORDER BY t\.seq\n", "\n", core, flags=re.S
        )
        assert found == 1
        core_of_0016, found = re.subn(r"\nDROP (TRIGGER|FUNCTION) IF EXISTS [^;]*;", "", core_of_0016)
        assert found == 2
        await conn.execute(core_of_0016)
        assert (
            await conn.fetchval("SELECT count(*) FROM pg_trigger WHERE tgname = 'transactions_events'") == 1
        )
        posted += [
            await _post(conn, key_id, kind, "u_boundary", amount)
            for kind, amount in (("spend", 5), ("bonus", 3))
        ]
        assert await conn.fetchval("SELECT count(*) FROM events WHERE payload - 'id' = '{}'") == 3
    finally:
        await conn.close()

    await upgrade_to_head_async(url)
    conn = await asyncpg.connect(url)
    try:
        posted += [
            await _post(conn, key_id, kind, "u_boundary", amount)
            for kind, amount in (("spend", 8), ("topup", 1))
        ]
        # The trigger went with 0016's core, in the same script as today's (one event each, below).
        assert (
            await conn.fetchval("SELECT count(*) FROM pg_trigger WHERE tgname = 'transactions_events'") == 0
        )
        stored = await conn.fetch(SERVED_SQL)
        events = await read_events(conn, None, 100)
    finally:
        await conn.close()
    assert [r["transaction_id"] for r in stored] == posted
    assert [r["by_column"] for r in stored] == [False, False, False, True, True]
    assert [r["served"] for r in stored] == [r["document"] for r in stored]
    assert [e.position.seq for e in events] == [r["seq"] for r in stored]
    served = [orjson.loads(e.json)["payload"] for e in events]
    assert [p["id"] for p in served] == posted
    assert served == [orjson.loads(r["document"]) for r in stored]


async def test_an_event_carries_a_payload_or_its_transaction_never_both_nor_neither(pool):
    insert = "INSERT INTO events (type, payload, transaction_id) VALUES ($1, $2::jsonb, $3::uuid)"
    some_id = "00000000-0000-7000-8000-000000000001"
    async with pool.acquire() as conn:
        await refused_by_check(
            conn, "events_payload_or_transaction_id", insert, "transaction.posted", None, None
        )
        await refused_by_check(
            conn, "events_payload_or_transaction_id", insert, "transaction.posted", '{"id": 1}', some_id
        )
        await refused_by_check(conn, "events_payload_or_transaction_id", insert, "hold.placed", None, some_id)
        await refused_by_check(conn, "events_payload_check", insert, "hold.placed", "[1]", None)
        transaction = conn.transaction()
        await transaction.start()
        try:  # the two well-formed kinds
            await conn.execute(insert, "transaction.posted", None, some_id)
            await conn.execute(insert, "hold.placed", '{"id": 1}', None)
        finally:
            await transaction.rollback()
