"""Races against a real PostgreSQL with real concurrent connections (the app's pool of 24).

Each test states the property a caller relies on: no lost or duplicated writes, no overdraft,
no deadlock, and no system-account row that serialises unrelated users.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from tests.support import balance_of, new_key, waiting_on

SPEND = "/api/v1/transactions/spend"
TOPUP = "/api/v1/transactions/topup"
BATCH = "/api/v1/transactions/batch"


async def test_200_concurrent_spends_of_1_against_100_succeed_exactly_100_times(client, pool, make_user):
    user = await make_user(GOLD_COINS=100)

    async def spend_one() -> int:
        response = await client.post(
            SPEND,
            headers={"Idempotency-Key": new_key()},
            json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 1},
        )
        return response.status_code

    statuses = await asyncio.gather(*(spend_one() for _ in range(200)))
    assert statuses.count(201) == 100
    assert statuses.count(409) == 100
    assert await balance_of(client, user) == 0
    spends = await pool.fetchval(
        "SELECT count(*) FROM transactions WHERE user_id = $1 AND type = 'spend'", user
    )
    assert spends == 100


async def test_20_way_same_key_race_writes_exactly_one_transaction(client, pool, make_user):
    user = await make_user()
    key = new_key()
    payload = {"user_id": user, "asset_type": "GOLD_COINS", "amount": 25}

    async def attempt():
        return await client.post(TOPUP, headers={"Idempotency-Key": key}, json=payload)

    responses = await asyncio.gather(*(attempt() for _ in range(20)))
    created = [r for r in responses if r.status_code == 201]
    in_use = [r for r in responses if r.status_code == 409]
    assert len(created) + len(in_use) == 20
    assert all(r.json()["error"]["code"] == "idempotency_key_in_use" for r in in_use)
    assert len({r.json()["id"] for r in created}) == 1
    assert sum(1 for r in created if "Idempotent-Replayed" not in r.headers) == 1
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM transactions WHERE user_id = $1 AND idempotency_key = $2", user, key
        )
        == 1
    )
    assert await balance_of(client, user) == 25


async def test_naive_lock_order_deadlocks_which_is_what_the_batch_avoids(database_url, make_user, pool):
    """The control: two transactions locking two accounts in opposite orders deadlock."""
    alice, bob = await make_user(), await make_user()
    ids = {
        r["user_id"]: r["id"]
        for r in await pool.fetch(
            "SELECT user_id, id FROM accounts WHERE user_id = ANY($1) AND asset_code = 'GOLD_COINS'",
            [alice, bob],
        )
    }
    first, second = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        lock = "SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE"
        t1, t2 = first.transaction(), second.transaction()
        await t1.start()
        await t2.start()
        await first.execute(lock, ids[alice])
        await second.execute(lock, ids[bob])
        outcomes = await asyncio.gather(
            first.execute(lock, ids[bob]), second.execute(lock, ids[alice]), return_exceptions=True
        )
        assert any(isinstance(o, asyncpg.exceptions.DeadlockDetectedError) for o in outcomes)
        await t1.rollback()
        await t2.rollback()
    finally:
        await first.close()
        await second.close()


async def test_crossing_batches_never_deadlock_and_conserve_money(client, make_user):
    alice, bob = await make_user(GOLD_COINS=1000), await make_user(GOLD_COINS=1000)

    def transfer(source: str, target: str) -> dict:
        return {
            "operations": [
                {"type": "spend", "user_id": source, "asset_type": "GOLD_COINS", "amount": 1},
                {"type": "topup", "user_id": target, "asset_type": "GOLD_COINS", "amount": 1},
            ]
        }

    async def post(payload: dict) -> int:
        response = await client.post(BATCH, json=payload, headers={"Idempotency-Key": new_key()})
        return response.status_code

    jobs = [post(transfer(alice, bob)) if i % 2 == 0 else post(transfer(bob, alice)) for i in range(200)]
    statuses = await asyncio.gather(*jobs)
    assert statuses == [201] * 200
    assert await balance_of(client, alice) == 1000
    assert await balance_of(client, bob) == 1000


async def test_topup_for_one_user_does_not_wait_for_another_users_open_topup(
    client, database_url, make_user, keys, pool
):
    """An uncommitted top-up holds everything a real one holds (user row lock, key, entries that
    reference SYSTEM_TREASURY). A top-up for another user must not queue behind it."""
    alice, bob = await make_user(), await make_user()
    api_key_id = await pool.fetchval("SELECT id FROM api_keys WHERE name = 'test-all'")
    holder = await asyncpg.connect(database_url)
    try:
        transaction = holder.transaction()
        await transaction.start()
        outcome = await holder.fetchval(
            "SELECT outcome FROM wallet_post_transaction($1, $2, 'topup', $3, 'GOLD_COINS', 5, NULL, '{}')",
            api_key_id,
            new_key(),
            alice,
        )
        assert outcome == "posted"
        started = time.monotonic()
        response = await client.post(
            TOPUP,
            headers={"Idempotency-Key": new_key()},
            json={"user_id": bob, "asset_type": "GOLD_COINS", "amount": 5},
        )
        elapsed_ms = (time.monotonic() - started) * 1000
        assert response.status_code == 201
        # Far below the 2 s lock timeout it would have hit had it queued.
        assert elapsed_ms < 1_000, elapsed_ms
        # A second top-up for alice does queue behind the open one (the row lock is real).
        blocked = asyncio.create_task(
            client.post(
                TOPUP,
                headers={"Idempotency-Key": new_key()},
                json={"user_id": alice, "asset_type": "GOLD_COINS", "amount": 1},
            )
        )
        await waiting_on(pool, holder.get_server_pid())
        assert not blocked.done()
        await transaction.commit()
        assert (await blocked).status_code == 201
    finally:
        await holder.close()
    assert await balance_of(client, alice) == 6
    assert await balance_of(client, bob) == 5


@pytest.mark.parametrize("holders", [1])
async def test_a_writer_that_outlasts_lock_timeout_gets_503_and_nothing_is_written(
    client, database_url, make_user, pool, holders
):
    user = await make_user(GOLD_COINS=10)
    holder = await asyncpg.connect(database_url)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE", user)
        key = new_key()
        response = await client.post(
            SPEND,
            headers={"Idempotency-Key": key},
            json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 1},
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "busy"
        assert response.headers["Retry-After"]
        await transaction.rollback()
    finally:
        await holder.close()
    # The key was not consumed: the retry goes through.
    retry = await client.post(
        SPEND,
        headers={"Idempotency-Key": key},
        json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 1},
    )
    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry.headers
    assert await balance_of(client, user) == 9
