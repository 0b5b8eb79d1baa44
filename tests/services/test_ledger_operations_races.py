"""Races on the ledger operations, with real concurrent requests (each on its own connection):
capture against void, partial reversals against each other, a spend against a hold for the last
credits, and transfers crossing in both directions. The books must balance after each."""

from __future__ import annotations

import asyncio
import random

from tests.support import new_key
from wallet.services.verify import verify_ledger


async def _balance(client, user: str) -> dict:
    balances = (await client.get(f"/api/v1/wallets/{user}/balance")).json()["balances"]
    return next(b for b in balances if b["asset_type"] == "GOLD_COINS")


async def test_capture_and_void_of_one_hold_exactly_one_wins(client, make_user):
    users = [await make_user(GOLD_COINS=100) for _ in range(10)]
    holds = []
    for user in users:
        response = await client.post(
            "/api/v1/holds",
            headers={"Idempotency-Key": new_key()},
            json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 60},
        )
        holds.append(response.json()["id"])
    calls = []
    for hold in holds:
        calls.append(client.post(f"/api/v1/holds/{hold}/capture", headers={"Idempotency-Key": new_key()}))
        calls.append(client.post(f"/api/v1/holds/{hold}/void", headers={"Idempotency-Key": new_key()}))
    responses = await asyncio.gather(*calls)
    for user, capture, void in zip(users, responses[0::2], responses[1::2], strict=True):
        assert sorted([capture.status_code, void.status_code]) in ([200, 409], [201, 409]), (
            capture.text,
            void.text,
        )
        loser = capture if capture.status_code == 409 else void
        assert loser.json()["error"]["code"] in ("hold_already_captured", "hold_already_voided")
        gold = await _balance(client, user)
        assert gold["held"] == 0
        assert gold["balance"] == (40 if capture.status_code == 201 else 100)


async def test_racing_partial_refunds_never_exceed_the_original(client, admin, make_user):
    user = await make_user(GOLD_COINS=100)
    spend = (
        await client.post(
            "/api/v1/transactions/spend",
            headers={"Idempotency-Key": new_key()},
            json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 100},
        )
    ).json()
    responses = await asyncio.gather(
        *[
            admin.post(
                f"/api/v1/transactions/{spend['id']}/reverse",
                headers={"Idempotency-Key": new_key()},
                json={"amount": 7},
            )
            for _ in range(30)
        ]
    )
    statuses = [r.status_code for r in responses]
    assert statuses.count(201) == 14 and statuses.count(409) == 16, statuses
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {
        "amount_exceeds_reversible"
    }
    assert (await client.get(f"/api/v1/transactions/{spend['id']}")).json()["reversed_amount"] == 98
    assert (await _balance(client, user))["balance"] == 98


async def test_a_spend_and_a_hold_racing_for_the_last_credits(client, make_user):
    users = [await make_user(GOLD_COINS=10) for _ in range(10)]
    calls = []
    for user in users:
        body = {"user_id": user, "asset_type": "GOLD_COINS", "amount": 10}
        calls.append(
            client.post("/api/v1/transactions/spend", headers={"Idempotency-Key": new_key()}, json=body)
        )
        calls.append(client.post("/api/v1/holds", headers={"Idempotency-Key": new_key()}, json=body))
    responses = await asyncio.gather(*calls)
    for user, spend, hold in zip(users, responses[0::2], responses[1::2], strict=True):
        assert sorted([spend.status_code, hold.status_code]) == [201, 409]
        gold = await _balance(client, user)
        assert gold["available"] == 0 and gold["balance"] >= 0


async def test_transfers_crossing_in_both_directions_neither_deadlock_nor_lose_credits(
    admin, client, make_user, pool
):
    users = [await make_user(GOLD_COINS=1000) for _ in range(4)]
    rng = random.Random(7)
    calls, fees = [], []
    for _ in range(200):
        sender, receiver = rng.sample(users, 2)
        fee = rng.randint(0, 3)
        fees.append(fee)
        calls.append(
            admin.post(
                "/api/v1/transactions/transfer",
                headers={"Idempotency-Key": new_key()},
                json={
                    "from_user_id": sender,
                    "to_user_id": receiver,
                    "asset_type": "GOLD_COINS",
                    "amount": rng.randint(1, 60),
                    "fee": fee,
                },
            )
        )
    responses = await asyncio.gather(*calls)
    assert {r.status_code for r in responses} <= {201, 409}, {r.status_code for r in responses}
    collected = sum(fee for fee, r in zip(fees, responses, strict=True) if r.status_code == 201)
    balances = [(await _balance(client, u))["balance"] for u in users]
    assert all(b >= 0 for b in balances)
    assert sum(balances) + collected == 4 * 1000
    async with pool.acquire() as conn:
        report = await verify_ledger(conn)
    assert report.clean, report.render()


async def test_trade_batches_crossing_the_same_users_do_not_deadlock(admin, client, make_user):
    alice, bob = (
        await make_user(GOLD_COINS=10_000, DIAMONDS=10_000),
        await make_user(GOLD_COINS=10_000, DIAMONDS=10_000),
    )

    def trade(buyer: str, seller: str) -> dict:
        return {
            "operations": [
                {
                    "type": "transfer",
                    "user_id": buyer,
                    "to_user_id": seller,
                    "asset_type": "GOLD_COINS",
                    "amount": 3,
                },
                {
                    "type": "transfer",
                    "user_id": seller,
                    "to_user_id": buyer,
                    "asset_type": "DIAMONDS",
                    "amount": 1,
                },
            ]
        }

    responses = await asyncio.gather(
        *[
            admin.post(
                "/api/v1/transactions/batch",
                headers={"Idempotency-Key": new_key()},
                json=trade(alice, bob) if i % 2 else trade(bob, alice),
            )
            for i in range(100)
        ]
    )
    assert [r.status_code for r in responses] == [201] * 100
    for user in (alice, bob):
        balances = {
            b["asset_type"]: b["balance"]
            for b in (await client.get(f"/api/v1/wallets/{user}/balance")).json()["balances"]
        }
        assert (balances["GOLD_COINS"], balances["DIAMONDS"]) == (10_000, 10_000)
