"""The change feed: every posted transaction and every change of a hold writes an event in the same
database transaction, and GET /api/v1/events serves them in an order no later commit can break
(gap-free for a consumer), with explicit limits, cursor validation and the one error shape."""

from __future__ import annotations

import asyncio
import random
import re
from datetime import datetime

import asyncpg
import pytest

from tests.support import bearer, new_key, wait_past
from wallet.services.events import EventType, Position, head_position

EVENTS = "/api/v1/events"
POST_SQL = (
    "SELECT outcome, body->>'id' AS id FROM wallet_post_transaction("
    "$1, $2, 'topup', $3, 'GOLD_COINS', $4, NULL, '{}'::jsonb)"
)
# What a stored event is about, as text: its transaction (migration 0017), else its payload's id.
EVENT_SUBJECT_ID = "coalesce(transaction_id::text, payload->>'id')"


async def _now(pool) -> str:
    """A cursor after every event visible now."""
    return (await head_position(pool)).encode()


async def _drain(
    client, after: str | None, limit: int = 200, *, until: tuple[str | tuple[str, str], ...] = ()
) -> tuple[list[dict], str | None]:
    """Every event visible after `after`, page by page; and the cursor to continue from.

    With `until` (payload ids, or (event type, payload id) pairs), it reads on from its cursor until each of them has arrived (at
    most 10 s). The feed's horizon may trail a commit for a moment: a transaction of another
    database that ends between the reader's snapshot and its read of pg_stat_activity counts as
    this database's for that one read (later, never wrong; see wallet_event_horizon), and the
    suite's other workers commit all the time."""
    events: list[dict] = []
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        response = await client.get(EVENTS, params={"limit": limit, **({"after": after} if after else {})})
        assert response.status_code == 200, response.text
        page = response.json()
        events += page["data"]
        if page["data"]:
            assert page["next_cursor"] == page["data"][-1]["cursor"]
        else:
            assert page["next_cursor"] == after
        after = page["next_cursor"]
        if page["has_more"]:
            continue
        arrived = {e["payload"].get("id") for e in events} | {
            (e["type"], e["payload"].get("id")) for e in events
        }
        missing = set(until) - arrived
        if not missing or asyncio.get_running_loop().time() > deadline:
            return events, after
        await asyncio.sleep(0.02)


async def _post(client, kind: str, user: str, amount: int, **extra) -> dict:
    response = await client.post(
        f"/api/v1/transactions/{kind}",
        headers={"Idempotency-Key": new_key()},
        json={"user_id": user, "asset_type": "GOLD_COINS", "amount": amount, **extra},
    )
    assert response.status_code == 201, response.text
    return response.json()


async def test_a_posted_transaction_is_an_event_carrying_its_document(client, admin, make_user, pool):
    user = await make_user()
    start = await _now(pool)
    topup = await _post(admin, "topup", user, 70, description="pack", metadata={"order_id": "8812"})
    spend = await _post(admin, "spend", user, 20)
    events, _ = await _drain(client, start, until=(topup["id"], spend["id"]))
    mine = [e for e in events if e["payload"].get("user_id") == user]
    assert [(e["type"], e["payload"]["id"]) for e in mine] == [
        ("transaction.posted", topup["id"]),
        ("transaction.posted", spend["id"]),
    ]
    # The transaction's document as posted, without its entries, reversed_amount and lots.
    expected = {k: v for k, v in topup.items() if k not in ("entries", "reversed_amount", "lots")}
    assert mine[0]["payload"] == expected
    assert set(mine[0]) == {"id", "type", "created_at", "cursor", "payload"}
    assert mine[0]["id"] < mine[1]["id"]


async def test_failed_and_replayed_writes_write_no_event(client, admin, make_user, pool):
    user = await make_user(GOLD_COINS=10)
    start = await _now(pool)
    key = new_key()
    body = {"user_id": user, "asset_type": "GOLD_COINS", "amount": 5}
    for _ in range(2):
        response = await admin.post("/api/v1/transactions/spend", headers={"Idempotency-Key": key}, json=body)
        assert response.status_code == 201
    refused = await admin.post(
        "/api/v1/transactions/spend", headers={"Idempotency-Key": new_key()}, json={**body, "amount": 500}
    )
    assert refused.status_code == 409
    events, _ = await _drain(client, start, until=(response.json()["id"],))
    assert [e["payload"]["amount"] for e in events if e["payload"].get("user_id") == user] == [5]


async def test_holds_transfers_batches_and_reversals_write_their_events(client, admin, make_user, pool):
    from wallet.services.holds import sweep_expired_holds

    alice, bob = await make_user(GOLD_COINS=500), await make_user()
    start = await _now(pool)
    hold = (
        await admin.post(
            "/api/v1/holds",
            headers={"Idempotency-Key": new_key()},
            json={"user_id": alice, "asset_type": "GOLD_COINS", "amount": 100},
        )
    ).json()
    capture = await admin.post(
        f"/api/v1/holds/{hold['id']}/capture", headers={"Idempotency-Key": new_key()}, json={"amount": 60}
    )
    assert capture.status_code == 201, capture.text
    voided = (
        await admin.post(
            "/api/v1/holds",
            headers={"Idempotency-Key": new_key()},
            json={"user_id": alice, "asset_type": "GOLD_COINS", "amount": 10},
        )
    ).json()
    assert (
        await admin.post(f"/api/v1/holds/{voided['id']}/void", headers={"Idempotency-Key": new_key()})
    ).status_code == 200
    expiring = (
        await admin.post(
            "/api/v1/holds",
            headers={"Idempotency-Key": new_key()},
            json={"user_id": alice, "asset_type": "GOLD_COINS", "amount": 5, "expires_in_seconds": 1},
        )
    ).json()
    transfer = await admin.post(
        "/api/v1/transactions/transfer",
        headers={"Idempotency-Key": new_key()},
        json={"from_user_id": alice, "to_user_id": bob, "asset_type": "GOLD_COINS", "amount": 30, "fee": 2},
    )
    assert transfer.status_code == 201, transfer.text
    refund = await admin.post(
        f"/api/v1/transactions/{capture.json()['id']}/reverse",
        headers={"Idempotency-Key": new_key()},
        json={"amount": 10},
    )
    assert refund.status_code == 201, refund.text
    batch = await admin.post(
        "/api/v1/transactions/batch",
        headers={"Idempotency-Key": new_key()},
        json={
            "operations": [
                {"type": "bonus", "user_id": bob, "asset_type": "GOLD_COINS", "amount": 3},
                {"type": "spend", "user_id": bob, "asset_type": "GOLD_COINS", "amount": 1},
            ]
        },
    )
    assert batch.status_code == 201, batch.text
    await wait_past(pool, datetime.fromisoformat(expiring["expires_at"]))
    assert await sweep_expired_holds(pool, 10_000) >= 1
    batch_ids = [t["id"] for t in batch.json()["transactions"]]

    events, _ = await _drain(client, start, until=(batch_ids[1], ("hold.expired", expiring["id"])))
    mine = [
        (e["type"], e["payload"].get("type") or e["payload"]["status"], e["payload"]["id"])
        for e in events
        if alice in (e["payload"].get("user_id"), e["payload"].get("counterparty_user_id"))
        or e["payload"].get("user_id") == bob
    ]
    assert mine == [
        ("hold.placed", "open", hold["id"]),
        ("transaction.posted", "capture", capture.json()["id"]),
        ("hold.captured", "captured", hold["id"]),
        ("hold.placed", "open", voided["id"]),
        ("hold.voided", "voided", voided["id"]),
        ("hold.placed", "open", expiring["id"]),
        ("transaction.posted", "transfer", transfer.json()["id"]),
        ("transaction.posted", "refund", refund.json()["id"]),
        ("transaction.posted", "bonus", batch_ids[0]),
        ("transaction.posted", "spend", batch_ids[1]),
        ("hold.expired", "expired", expiring["id"]),
    ]
    by_type = {(e["type"], e["payload"]["id"]): e["payload"] for e in events}
    assert by_type[("hold.captured", hold["id"])]["captured_amount"] == 60
    assert by_type[("transaction.posted", transfer.json()["id"])]["fee"] == 2
    assert by_type[("transaction.posted", refund.json()["id"])]["reverses"] == capture.json()["id"]


async def test_an_event_never_appears_behind_a_cursor_a_reader_has_passed(
    client, admin, make_user, pool, database_url
):
    """The proof of the gap-free order. Transaction A writes its event first and stays open;
    transaction B writes a later one and commits. A reader must not see B's event yet (if it did,
    its cursor would pass A's slot, and A's event would appear behind it on commit). Once A
    commits, reading on from the same cursor yields A's event, then B's: nothing is missed. The
    control shows that a cursor on the event sequence alone skips A's event."""
    first, second = await make_user(), await make_user()
    api_key_id = await pool.fetchval("SELECT id FROM api_keys WHERE name = 'test-admin'")
    start = await _now(pool)
    naive_cursor = await pool.fetchval("SELECT coalesce(max(seq), 0) FROM events")

    conn_a = await asyncpg.connect(database_url)
    conn_b = await asyncpg.connect(database_url)
    try:
        tx_a = conn_a.transaction()
        await tx_a.start()
        posted_a = await conn_a.fetchrow(POST_SQL, api_key_id, new_key(), first, 11)
        async with conn_b.transaction():
            posted_b = await conn_b.fetchrow(POST_SQL, api_key_id, new_key(), second, 22)
        assert posted_a["outcome"] == posted_b["outcome"] == "posted"
        # B's event is committed ...
        committed = await pool.fetchval(
            f"SELECT count(*) FROM events WHERE {EVENT_SUBJECT_ID} = $1", posted_b["id"]
        )
        assert committed == 1
        # ... but not served while A, which took its transaction id earlier, may still commit.
        seen, cursor = await _drain(client, start)
        assert posted_b["id"] not in [e["payload"]["id"] for e in seen]
        # Control: a reader paging by the event sequence alone sees B now and moves past A's slot.
        naive = await pool.fetch(
            f"SELECT seq, {EVENT_SUBJECT_ID} AS id FROM events WHERE seq > $1", naive_cursor
        )
        assert [r["id"] for r in naive] == [posted_b["id"]]
        naive_cursor = max(r["seq"] for r in naive)

        await tx_a.commit()
    finally:
        await conn_a.close()
        await conn_b.close()

    later, _ = await _drain(client, cursor, until=(posted_a["id"], posted_b["id"]))
    ids = [e["payload"]["id"] for e in later]
    assert ids.index(posted_a["id"]) < ids.index(posted_b["id"])
    # The naive reader would never get A's event: it was numbered before its cursor.
    naive_after = await pool.fetch(
        f"SELECT {EVENT_SUBJECT_ID} AS id FROM events WHERE seq > $1", naive_cursor
    )
    assert posted_a["id"] not in [r["id"] for r in naive_after]
    seq_a = await pool.fetchval(f"SELECT seq FROM events WHERE {EVENT_SUBJECT_ID} = $1", posted_a["id"])
    assert seq_a < naive_cursor


async def test_a_reader_polling_during_concurrent_commits_misses_nothing(
    client, make_user, pool, database_url
):
    """Writers commit (and roll back) out of the order in which they took their transaction ids,
    while a reader polls from its cursor: the reader gets every committed event exactly once, in
    feed order, and none of the rolled-back ones."""
    users = [await make_user() for _ in range(8)]
    api_key_id = await pool.fetchval("SELECT id FROM api_keys WHERE name = 'test-admin'")
    start = await _now(pool)
    committed: list[str] = []
    rolled_back: list[str] = []
    rng = random.Random(20261127)

    async def writer(user: str) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            for _ in range(12):
                tx = conn.transaction()
                await tx.start()
                row = await conn.fetchrow(POST_SQL, api_key_id, new_key(), user, 1)
                await conn.execute("SELECT pg_sleep($1)", rng.random() * 0.03)
                if rng.random() < 0.2:
                    await tx.rollback()
                    rolled_back.append(row["id"])
                else:
                    await tx.commit()
                    committed.append(row["id"])
        finally:
            await conn.close()

    seen: list[dict] = []
    writers = asyncio.gather(*(writer(u) for u in users))
    cursor: str | None = start
    while not writers.done():
        page, cursor = await _drain(client, cursor, limit=7)
        seen += page
        await asyncio.sleep(0.005)
    await writers
    page, cursor = await _drain(
        client, cursor, until=tuple(set(committed) - {e["payload"]["id"] for e in seen})
    )
    seen += page

    positions = [Position.decode(e["cursor"]) for e in seen]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    mine = [e["payload"]["id"] for e in seen if e["payload"].get("user_id") in users]
    assert sorted(mine) == sorted(committed)
    assert not set(mine) & set(rolled_back)
    assert len(committed) > 50 and rolled_back


async def test_pages_follow_the_cursor_and_say_when_more_are_ready(client, admin, make_user, pool):
    user = await make_user()
    start = await _now(pool)
    posted = [(await _post(admin, "topup", user, n))["id"] for n in (1, 2, 3)]
    ids, after = [], start
    for _ in range(3):
        page = (await client.get(EVENTS, params={"after": after, "limit": 1})).json()
        assert len(page["data"]) == 1
        ids.append(page["data"][0]["payload"]["id"])
        after = page["next_cursor"]
    assert ids == posted
    last = (await client.get(EVENTS, params={"after": after, "limit": 1})).json()
    assert last == {"data": [], "next_cursor": after, "has_more": False}
    first_two = (await client.get(EVENTS, params={"after": start, "limit": 2})).json()
    assert first_two["has_more"] is True
    # From the start of the feed when no cursor is given.
    oldest = (await client.get(EVENTS, params={"limit": 1})).json()["data"][0]
    assert Position.decode(oldest["cursor"]) <= Position.decode(first_two["data"][0]["cursor"])


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"after": "not-a-cursor"}, "after"),
        ({"after": ""}, "after"),
        ({"after": "MTIz"}, "after"),  # "123": no seq
        ({"after": "YS5i"}, "after"),  # "a.b"
        ({"after": "OTk5OTk5OTk5OTk5OTk5OTk5OS4x"}, "after"),  # txid beyond xid8's range in use
        ({"after": "x" * 201}, "after"),
        ({"limit": 0}, "limit"),
        ({"limit": 10_000}, "limit"),
        ({"limit": "many"}, "limit"),
    ],
)
async def test_bad_cursors_and_limits_are_422_naming_the_field(client, params, field):
    response = await client.get(EVENTS, params=params)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and error["code"] in ("invalid_request", "validation_error")


async def test_the_feed_needs_a_key_with_read_and_answers_head(app, client, keys):
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://wallet.test") as anonymous:
        assert (await anonymous.get(EVENTS)).status_code == 401
        credit_only = await anonymous.get(EVENTS, headers=bearer(keys["credit"]))
        assert credit_only.status_code == 403 and credit_only.json()["error"]["code"] == "forbidden"
    head = await client.head(EVENTS, params={"limit": 1})
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == "application/json"


async def test_events_are_append_only(database_url, client, admin, make_user):
    await _post(admin, "topup", await make_user(), 1)
    conn = await asyncpg.connect(database_url)
    try:
        for sql in ("UPDATE events SET type = 'hold.placed'", "DELETE FROM events", "TRUNCATE events"):
            with pytest.raises(asyncpg.exceptions.RestrictViolationError):
                await conn.execute(sql)
        with pytest.raises(asyncpg.exceptions.CheckViolationError):
            await conn.execute("INSERT INTO events (type, payload) VALUES ('user.deleted', '{}')")
    finally:
        await conn.close()


async def test_the_event_types_are_those_the_database_accepts(pool):
    definition = await pool.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = 'events'::regclass AND contype = 'c' AND conname LIKE '%type%'"
    )
    assert set(re.findall(r"'([a-z.]+)'::text", definition)) == {t.value for t in EventType}


async def test_a_cursor_is_opaque_but_stable(pool):
    position = Position(123456789, 42)
    assert Position.decode(position.encode()) == position
    assert Position.decode(None) is None
    assert position < Position(123456789, 43) < Position(123456790, 1)


async def test_a_long_transaction_in_another_database_does_not_hold_the_feed_back(
    client, admin, make_user, pool, create_database
):
    """Transaction ids are shared by every database of the server, and so is the snapshot's xmin;
    the feed's horizon leaves out the transactions of other databases (a pgbench -i, a batch job)."""
    user = await make_user()
    other = await asyncpg.connect(await create_database())
    try:
        elsewhere = other.transaction()
        await elsewhere.start()
        await other.execute("CREATE TABLE busy (n int)")  # takes a transaction id, and keeps it
        foreign_xid = await other.fetchval("SELECT pg_current_xact_id()")
        start = await _now(pool)
        topup = await _post(admin, "topup", user, 5)
        events, _ = await _drain(client, start, until=(topup["id"],))
        assert topup["id"] in [e["payload"]["id"] for e in events]
        # Control: a horizon taken from the snapshot's xmin would still be behind the other database.
        xmin = await pool.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())")
        assert xmin <= foreign_xid
        await elsewhere.rollback()
    finally:
        await other.close()
