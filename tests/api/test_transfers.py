"""Transfers between users over HTTP, and balances and history as of a time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx

from tests.support import new_key

TRANSFER = "/api/v1/transactions/transfer"


async def _balances(client, user: str, **params) -> dict[str, dict]:
    response = await client.get(f"/api/v1/wallets/{user}/balance", params=params)
    assert response.status_code == 200, response.text
    return {b["asset_type"]: b for b in response.json()["balances"]}


async def test_a_transfer_moves_amount_to_the_receiver_and_the_fee_to_revenue(client, admin, make_user):
    alice, bob = await make_user(GOLD_COINS=100), await make_user(GOLD_COINS=5)
    response = await admin.post(
        TRANSFER,
        headers={"Idempotency-Key": new_key()},
        json={
            "from_user_id": alice,
            "to_user_id": bob,
            "asset_type": "GOLD_COINS",
            "amount": 30,
            "fee": 2,
            "description": "gift",
        },
    )
    assert response.status_code == 201, response.text
    transfer = response.json()
    assert transfer["type"] == "transfer" and transfer["user_id"] == alice
    assert transfer["counterparty_user_id"] == bob and transfer["fee"] == 2
    assert transfer["balance_after"] == 68 and transfer["counterparty_balance_after"] == 35
    assert [(e["account"], e["amount"]) for e in transfer["entries"]] == [
        (alice, -32),
        (bob, 30),
        ("SYSTEM_REVENUE", 2),
    ]
    assert (await _balances(client, alice))["GOLD_COINS"]["balance"] == 68
    assert (await _balances(client, bob))["GOLD_COINS"]["balance"] == 35
    for user in (alice, bob):
        history = (await client.get(f"/api/v1/wallets/{user}/transactions")).json()["data"]
        assert history[0]["id"] == transfer["id"]


async def test_transfer_refusals(client, admin, app, keys, make_user):
    alice, bob = await make_user(GOLD_COINS=10), await make_user()
    body = {"from_user_id": alice, "to_user_id": bob, "asset_type": "GOLD_COINS"}
    cases = [
        ({**body, "amount": 10, "fee": 1}, 409, "insufficient_funds"),
        ({**body, "to_user_id": alice, "amount": 1}, 422, "same_user"),
        ({**body, "to_user_id": "nobody_y", "amount": 1}, 404, "user_not_found"),
        ({**body, "from_user_id": "nobody_y", "amount": 1}, 404, "user_not_found"),
        ({**body, "asset_type": "NOPE", "amount": 1}, 404, "asset_type_not_found"),
        ({**body, "amount": 1, "fee": -1}, 422, "validation_error"),
        ({**body, "amount": 1, "fee": "1"}, 422, "validation_error"),
    ]
    for request, status, code in cases:
        response = await admin.post(TRANSFER, headers={"Idempotency-Key": new_key()}, json=request)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), request
    # The spend scope is not enough; the transfer scope is.
    refused = await client.post(TRANSFER, headers={"Idempotency-Key": new_key()}, json={**body, "amount": 1})
    assert refused.status_code == 403
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://wallet.test",
        headers={"Authorization": f"Bearer {keys['transfer']}"},
    ) as transferer:
        ok = await transferer.post(
            TRANSFER, headers={"Idempotency-Key": new_key()}, json={**body, "amount": 1}
        )
        assert ok.status_code == 201
    assert (await _balances(client, alice))["GOLD_COINS"]["balance"] == 9


async def test_balance_and_history_as_of_a_time(client, admin, make_user):
    alice, bob = await make_user(), await make_user()
    await admin.post(
        "/api/v1/transactions/topup",
        headers={"Idempotency-Key": new_key()},
        json={"user_id": alice, "asset_type": "DIAMONDS", "amount": 100},
    )
    await asyncio.sleep(0.01)
    t1 = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await admin.post(
        TRANSFER,
        headers={"Idempotency-Key": new_key()},
        json={"from_user_id": alice, "to_user_id": bob, "asset_type": "DIAMONDS", "amount": 40},
    )
    await asyncio.sleep(0.01)
    t2 = datetime.now(UTC)
    assert (await _balances(client, alice, as_of=t1.isoformat()))["DIAMONDS"]["balance"] == 100
    assert (await _balances(client, bob, as_of=t1.isoformat()))["DIAMONDS"]["balance"] == 0
    assert (await _balances(client, alice, as_of=t2.isoformat()))["DIAMONDS"]["balance"] == 60
    assert (await _balances(client, bob, as_of=t2.isoformat()))["DIAMONDS"]["balance"] == 40
    before = await client.get(f"/api/v1/wallets/{alice}/transactions", params={"to": t1.isoformat()})
    assert [t["type"] for t in before.json()["data"]] == ["topup"]
    after = await client.get(f"/api/v1/wallets/{bob}/transactions", params={"from": t1.isoformat()})
    assert [t["type"] for t in after.json()["data"]] == ["transfer"]
    naive = await client.get(f"/api/v1/wallets/{alice}/balance", params={"as_of": "2026-01-01T00:00:00"})
    assert naive.status_code == 422 and naive.json()["error"]["field"] == "as_of"


async def test_a_trade_is_two_transfers_in_one_batch_all_or_nothing(client, admin, make_user):
    alice, bob = await make_user(GOLD_COINS=100), await make_user(DIAMONDS=5)
    trade = [
        {
            "type": "transfer",
            "user_id": alice,
            "to_user_id": bob,
            "asset_type": "GOLD_COINS",
            "amount": 60,
            "fee": 1,
        },
        {"type": "transfer", "user_id": bob, "to_user_id": alice, "asset_type": "DIAMONDS", "amount": 5},
    ]
    response = await admin.post(
        "/api/v1/transactions/batch", headers={"Idempotency-Key": new_key()}, json={"operations": trade}
    )
    assert response.status_code == 201, response.text
    first, second = response.json()["transactions"]
    assert (first["type"], first["counterparty_user_id"], first["fee"]) == ("transfer", bob, 1)
    assert [(e["account"], e["amount"]) for e in first["entries"]] == [
        (alice, -61),
        (bob, 60),
        ("SYSTEM_REVENUE", 1),
    ]
    assert (first["balance_after"], first["counterparty_balance_after"]) == (39, 60)
    assert (second["balance_after"], second["counterparty_balance_after"]) == (0, 5)
    stored = (await client.get(f"/api/v1/transactions/{first['id']}")).json()
    assert stored == first
    assert (await _balances(client, alice))["DIAMONDS"]["balance"] == 5
    assert (await _balances(client, bob))["GOLD_COINS"]["balance"] == 60

    # Alice could pay 30 more gold, but Bob has no diamonds left: the whole trade is refused and
    # neither side moves.
    trade[0] = {**trade[0], "amount": 30}
    again = await admin.post(
        "/api/v1/transactions/batch", headers={"Idempotency-Key": new_key()}, json={"operations": trade}
    )
    assert again.status_code == 409, again.text
    assert again.json()["error"] == {
        "code": "insufficient_funds",
        "message": "operation 1: available balance is less than 5",
        "field": "operations[1].amount",
    }
    assert (await _balances(client, alice))["GOLD_COINS"]["balance"] == 39


async def test_batch_transfer_refusals_name_the_operation(admin, client, make_user):
    alice = await make_user(GOLD_COINS=10)
    base = {"type": "transfer", "user_id": alice, "asset_type": "GOLD_COINS", "amount": 1}
    cases = [
        ({**base}, 422, "validation_error", "operations[0].to_user_id"),
        ({**base, "to_user_id": alice}, 422, "same_user", "operations[0].to_user_id"),
        ({**base, "to_user_id": "nobody_z"}, 404, "user_not_found", "operations[0].to_user_id"),
        (
            {"type": "topup", "user_id": alice, "to_user_id": "x", "asset_type": "GOLD_COINS", "amount": 1},
            422,
            "validation_error",
            "operations[0].to_user_id",
        ),
        ({**base, "type": "capture", "to_user_id": "x"}, 422, "validation_error", "operations[0].type"),
    ]
    for operation, status, code, field in cases:
        response = await admin.post(
            "/api/v1/transactions/batch",
            headers={"Idempotency-Key": new_key()},
            json={"operations": [operation]},
        )
        error = response.json()["error"]
        assert (response.status_code, error["code"], error["field"]) == (status, code, field), operation
    refused = await client.post(
        "/api/v1/transactions/batch",
        headers={"Idempotency-Key": new_key()},
        json={"operations": [{**base, "to_user_id": await make_user()}]},
    )
    assert refused.status_code == 403  # the transfer scope is needed for a transfer in a batch


async def test_history_within_a_time_range_pages_through_exactly_that_range(client, admin, make_user):
    user, other = await make_user(), await make_user(GOLD_COINS=100)
    ids, times = [], []
    for i in range(8):
        if i % 3 == 2:  # some arrive as transfers received, some in another asset
            response = await admin.post(
                TRANSFER,
                headers={"Idempotency-Key": new_key()},
                json={"from_user_id": other, "to_user_id": user, "asset_type": "GOLD_COINS", "amount": 1},
            )
        else:
            response = await admin.post(
                "/api/v1/transactions/topup",
                headers={"Idempotency-Key": new_key()},
                json={"user_id": user, "asset_type": "DIAMONDS" if i % 2 else "GOLD_COINS", "amount": 1},
            )
        assert response.status_code == 201
        ids.append(response.json()["id"])
        await asyncio.sleep(0.005)
        times.append(datetime.now(UTC))
    start, end = times[1], times[6]  # after the 2nd posting, up to and including the 7th
    seen, cursor = [], None
    while True:
        params = {"from": start.isoformat(), "to": end.isoformat(), "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get(f"/api/v1/wallets/{user}/transactions", params=params)).json()
        seen += [t["id"] for t in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids[2:7]))
    only_diamonds = await client.get(
        f"/api/v1/wallets/{user}/transactions",
        params={"from": start.isoformat(), "to": end.isoformat(), "asset_type": "DIAMONDS"},
    )
    assert [t["id"] for t in only_diamonds.json()["data"]] == [ids[3]]
    empty = await client.get(
        f"/api/v1/wallets/{user}/transactions", params={"to": times[0].replace(year=2000).isoformat()}
    )
    assert empty.json() == {"data": [], "next_cursor": None}
    missing = await client.get("/api/v1/wallets/nobody_r/transactions", params={"to": end.isoformat()})
    assert missing.status_code == 404
