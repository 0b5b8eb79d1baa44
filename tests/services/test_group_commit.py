"""Group commit: writes posted together keep their own outcomes and idempotency records, apply in
arrival order per user, and give exactly what posting them one by one would give."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson
import pytest

from tests.support import new_key, wait_past
from wallet.services.group_commit import GROUP_SIZE, GroupCommitter, Write
from wallet.services.verify import verify_ledger


@pytest.fixture
async def client_id(pool: asyncpg.Pool, keys: dict[str, str]) -> int:
    value = await pool.fetchval("SELECT id FROM api_keys WHERE name = 'test-admin'")
    assert isinstance(value, int)
    return value


def _write(
    client_id: int, type: str, user: str, amount: int, *, key: str | None = None, **extra: Any
) -> Write:
    return Write(
        api_key_id=client_id,
        idempotency_key=key or new_key(),
        type=type,
        user_id=user,
        asset_code=extra.get("asset", "GOLD_COINS"),
        amount_minor=amount,
        description=extra.get("description"),
        metadata_json=orjson.dumps(extra.get("metadata", {})).decode(),
    )


async def _group(
    pool: asyncpg.Pool, writes: list[Write]
) -> list[tuple[str | None, dict[str, Any] | None, bool]]:
    committer = GroupCommitter(pool, max_size=len(writes), max_in_flight=1)
    rows = await committer._post_group(writes)
    return [(r["outcome"], orjson.loads(r["body"]) if r["body"] else None, r["replayed"]) for r in rows]


async def _balance(pool: asyncpg.Pool, user: str, asset: str = "GOLD_COINS") -> int:
    value = await pool.fetchval(
        "SELECT balance_minor FROM accounts WHERE user_id = $1 AND asset_code = $2", user, asset
    )
    assert isinstance(value, int)
    return value


async def test_a_short_spend_fails_alone_and_the_others_commit(pool, client_id, make_user):
    alice, bob = await make_user(GOLD_COINS=100), await make_user(GOLD_COINS=10)
    writes = [
        _write(client_id, "topup", alice, 10),
        _write(client_id, "spend", alice, 200),
        _write(client_id, "spend", bob, 5, metadata={"sku": "sword", "price": 1.10}),
        _write(client_id, "bonus", alice, 1, asset="DIAMONDS"),
        _write(client_id, "spend", "nobody", 1),
    ]
    results = await _group(pool, writes)
    assert [r[0] for r in results] == ["posted", "insufficient_funds", "posted", "posted", "user_not_found"]
    assert results[1][1] == {
        "error": {
            "code": "insufficient_funds",
            "message": f"available balance of {alice} GOLD_COINS is less than 200",
            "field": "amount",
        }
    }
    assert await _balance(pool, alice) == 110
    assert await _balance(pool, bob) == 5
    assert results[0][1]["balance_after"] == 110
    assert results[2][1]["metadata"] == {"sku": "sword", "price": 1.1}
    # Each write its own idempotency record: the refused spend's too, not the 404's.
    stored = await pool.fetch(
        "SELECT key, outcome FROM idempotency_keys WHERE api_key_id = $1 AND key = ANY($2)",
        client_id,
        [w.idempotency_key for w in writes],
    )
    assert {r["key"]: r["outcome"] for r in stored} == {
        writes[0].idempotency_key: "posted",
        writes[1].idempotency_key: "insufficient_funds",
        writes[2].idempotency_key: "posted",
        writes[3].idempotency_key: "posted",
    }


async def test_the_same_document_and_fingerprint_as_posting_alone(pool, client_id, make_user, admin):
    user = await make_user(GOLD_COINS=50)
    writes = [_write(client_id, "spend", user, 20, description="potion", metadata={"a": [1, {"b": None}]})]
    writes.append(_write(client_id, "topup", user, 5))
    results = await _group(pool, writes)
    posted = results[0][1]
    assert posted is not None
    # The stored document is what GET /transactions/{id} shows.
    fetched = await admin.get(f"/api/v1/transactions/{posted['id']}")
    assert fetched.json() == posted
    # A retry posted alone finds the group's record: the same fingerprint, a replay.
    w = writes[0]
    alone = await pool.fetchrow(
        "SELECT outcome, body, replayed FROM wallet_post_transaction($1, $2, $3, $4, $5, $6, $7, $8::jsonb)",
        w.api_key_id,
        w.idempotency_key,
        w.type,
        w.user_id,
        w.asset_code,
        w.amount_minor,
        w.description,
        w.metadata_json,
    )
    assert alone["outcome"] == "posted"
    assert alone["replayed"] is True
    assert orjson.loads(alone["body"]) == posted


async def test_writes_for_one_user_apply_in_arrival_order(pool, client_id, make_user):
    user = await make_user(GOLD_COINS=100)
    writes = [
        _write(client_id, "spend", user, 60),
        _write(client_id, "spend", user, 60),  # 40 left: short
        _write(client_id, "topup", user, 50),
        _write(client_id, "spend", user, 60),  # 90 left: fine
    ]
    results = await _group(pool, writes)
    assert [r[0] for r in results] == ["posted", "insufficient_funds", "posted", "posted"]
    assert [r[1]["balance_after"] for r in results if r[0] == "posted"] == [40, 90, 30]
    assert await _balance(pool, user) == 30
    # History (newest first) is in arrival order too.
    amounts = await pool.fetch(
        "SELECT type, amount_minor, balance_after_minor FROM transactions WHERE user_id = $1 ORDER BY seq",
        user,
    )
    assert [(r["type"], r["amount_minor"], r["balance_after_minor"]) for r in amounts][-3:] == [
        ("spend", 60, 40),
        ("topup", 50, 90),
        ("spend", 60, 30),
    ]


async def test_one_key_twice_in_a_group_gives_one_transaction_and_a_replay(pool, client_id, make_user):
    user = await make_user(GOLD_COINS=100)
    same, other = new_key(), new_key()
    results = await _group(
        pool,
        [
            _write(client_id, "spend", user, 10, key=same),
            _write(client_id, "spend", user, 10, key=same),
            _write(client_id, "spend", user, 10, key=other),
            _write(client_id, "spend", user, 11, key=other),  # same key, another request
        ],
    )
    assert [(r[0], r[2]) for r in results] == [
        ("posted", False),
        ("posted", True),
        ("posted", False),
        ("idempotency_key_reused", False),
    ]
    assert results[0][1] == results[1][1]
    assert await _balance(pool, user) == 80
    count = await pool.fetchval(
        "SELECT count(*) FROM transactions WHERE idempotency_key = ANY($1)", [same, other]
    )
    assert count == 2


async def test_a_key_stored_before_replays_inside_a_group(pool, client_id, make_user):
    user = await make_user(GOLD_COINS=100)
    key = new_key()
    first = await _group(
        pool, [_write(client_id, "spend", user, 30, key=key), _write(client_id, "topup", user, 1)]
    )
    again = await _group(
        pool, [_write(client_id, "topup", user, 2), _write(client_id, "spend", user, 30, key=key)]
    )
    assert again[1] == (first[0][0], first[0][1], True)
    assert await _balance(pool, user) == 100 - 30 + 1 + 2


async def test_a_key_held_by_a_request_in_flight_is_left_to_post_alone(pool, client_id, make_user):
    user = await make_user(GOLD_COINS=100)
    busy = new_key()
    async with pool.acquire() as holder:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, $2))", busy, client_id)
        try:
            results = await _group(
                pool, [_write(client_id, "spend", user, 5, key=busy), _write(client_id, "spend", user, 7)]
            )
        finally:
            await transaction.rollback()
    assert results[0] == (None, None, False)
    assert results[1][0] == "posted"
    assert await _balance(pool, user) == 93


async def test_concurrent_writes_through_the_committer_form_groups_and_match_the_books(
    pool, client_id, make_user
):
    users = [await make_user(GOLD_COINS=20) for _ in range(4)]
    committer = GroupCommitter(pool, max_size=64, max_in_flight=1)
    before_count, before_sum = _histogram(GROUP_SIZE)
    writes = [_write(client_id, "spend" if i % 3 else "topup", users[i % 4], 3) for i in range(120)]
    posted = await asyncio.gather(*(committer.post(w) for w in writes))
    after_count, after_sum = _histogram(GROUP_SIZE)
    calls, grouped = after_count - before_count, after_sum - before_sum
    assert grouped == 120
    assert calls < 60, f"{calls} calls for 120 writes: no grouping happened"
    for user in users:
        expected = 20
        for write, outcome in zip(writes, posted, strict=True):
            if write.user_id == user and outcome.code.code == "posted":
                expected += 3 if write.type == "topup" else -3
        assert await _balance(pool, user) == expected
        assert expected >= 0
    assert {p.code.code for p in posted} <= {"posted", "insufficient_funds"}
    async with pool.acquire() as conn:
        report = await verify_ledger(conn)
    assert report.clean, report.render()


def _histogram(histogram: Any) -> tuple[float, float]:
    count = total = 0.0
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                count += sample.value
            elif sample.name.endswith("_sum"):
                total += sample.value
    return count, total


async def test_a_failing_group_call_falls_back_to_posting_each_alone(pool, client_id, make_user):
    """A row lock held past lock_timeout makes the group call fail as a whole: each write is then
    posted alone, so only the one on the locked account fails (503 busy over HTTP)."""
    locked, other = await make_user(GOLD_COINS=1), await make_user(GOLD_COINS=1)
    committer = GroupCommitter(pool, max_size=8, max_in_flight=1)
    async with pool.acquire() as holder:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute(
            "SELECT 1 FROM accounts WHERE user_id = $1 AND asset_code = 'GOLD_COINS' FOR UPDATE", locked
        )
        try:
            first = asyncio.ensure_future(committer.post(_write(client_id, "topup", other, 1)))
            blocked = asyncio.ensure_future(committer.post(_write(client_id, "topup", locked, 10)))
            fine = asyncio.ensure_future(committer.post(_write(client_id, "topup", other, 2)))
            assert (await first).code.code == "posted"
            with pytest.raises(asyncpg.LockNotAvailableError):
                await blocked
            assert (await fine).code.code == "posted"
        finally:
            await transaction.rollback()
    assert await _balance(pool, other) == 4
    assert await _balance(pool, locked) == 1


async def test_writes_to_an_account_whose_hold_keeps_expired_credits_are_posted_alone(
    pool, client_id, make_user, client, admin
):
    """A credit to such an account lets the hold rest on it and the expired credits go
    (wallet_expire_lots_for), which the group's in-memory pass does not follow: that account's
    writes are left to be posted alone, and each answer agrees with the balance read after it."""
    user, other = await make_user(GOLD_COINS=30), await make_user(GOLD_COINS=1)
    at = await pool.fetchval("SELECT clock_timestamp() + interval '1.5 seconds'")
    bonus = await admin.post(
        "/api/v1/transactions/bonus",
        headers={"Idempotency-Key": new_key()},
        json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 40, "expires_at": at.isoformat()},
    )
    assert bonus.status_code == 201, bonus.text
    hold = await client.post(
        "/api/v1/holds",
        headers={"Idempotency-Key": new_key()},
        json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 50},
    )
    assert hold.status_code == 201, hold.text
    await wait_past(pool, at)
    undecided = await _group(
        pool, [_write(client_id, "topup", user, 5), _write(client_id, "topup", other, 2)]
    )
    assert undecided[0] == (None, None, False) and undecided[1][0] == "posted"
    committer = GroupCommitter(pool, max_size=8, max_in_flight=1)
    loop = asyncio.get_running_loop()
    group = [(_write(client_id, "topup", user, 5), loop.create_future()) for _ in range(2)]
    group.append((_write(client_id, "topup", other, 3), loop.create_future()))
    await committer.serve(group)
    answers = [orjson.loads((await future).body_json)["balance_after"] for _, future in group]
    read = await client.get(f"/api/v1/wallets/{user}/balance", params={"asset_type": "GOLD_COINS"})
    # 30 + 40, less the 20 the hold did not need, then each top-up of 5 replaces 5 of the 20 kept.
    assert answers[:2] == [50, 50] and read.json()["balances"][0]["balance"] == 50
    assert answers[2] == 6
