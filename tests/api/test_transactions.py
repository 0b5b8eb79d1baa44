"""The three flows, the batch, and idempotency, through the real ASGI app and PostgreSQL."""

from __future__ import annotations

import uuid

import httpx

from tests.support import balance_of, ledger_counts, new_key

TOPUP = "/api/v1/transactions/topup"
BONUS = "/api/v1/transactions/bonus"
SPEND = "/api/v1/transactions/spend"
BATCH = "/api/v1/transactions/batch"


def body(user_id: str, amount: int = 100, asset: str = "GOLD_COINS", **extra: object) -> dict:
    return {"user_id": user_id, "asset_type": asset, "amount": amount, **extra}


async def test_topup_credits_user_from_treasury_with_balanced_entries(client, make_user):
    user = await make_user()
    response = await client.post(
        TOPUP,
        json=body(user, 250, metadata={"order": "A-1"}, description="Starter pack"),
        headers={"Idempotency-Key": new_key()},
    )
    assert response.status_code == 201, response.text
    txn = response.json()
    assert txn["type"] == "topup"
    assert txn["status"] == "posted"
    assert txn["user_id"] == user
    assert txn["asset_type"] == "GOLD_COINS"
    assert txn["amount"] == 250
    assert txn["balance_after"] == 250
    assert txn["metadata"] == {"order": "A-1"}
    assert txn["description"] == "Starter pack"
    entries = {e["account"]: e["amount"] for e in txn["entries"]}
    assert entries == {user: 250, "SYSTEM_TREASURY": -250}
    assert "Idempotent-Replayed" not in response.headers
    assert await balance_of(client, user) == 250


async def test_bonus_credits_user_from_promotions(client, make_user):
    user = await make_user(GOLD_COINS=10)
    response = await client.post(
        BONUS, json=body(user, 5, asset="GOLD_COINS"), headers={"Idempotency-Key": new_key()}
    )
    assert response.status_code == 201
    assert {e["account"]: e["amount"] for e in response.json()["entries"]} == {
        user: 5,
        "SYSTEM_PROMOTIONS": -5,
    }
    assert response.json()["balance_after"] == 15


async def test_spend_debits_user_into_revenue(client, make_user):
    user = await make_user(DIAMONDS=40)
    response = await client.post(
        SPEND, json=body(user, 15, asset="DIAMONDS"), headers={"Idempotency-Key": new_key()}
    )
    assert response.status_code == 201
    txn = response.json()
    assert {e["account"]: e["amount"] for e in txn["entries"]} == {user: -15, "SYSTEM_REVENUE": 15}
    assert txn["balance_after"] == 25
    assert await balance_of(client, user, "DIAMONDS") == 25
    assert await balance_of(client, user, "GOLD_COINS") == 0


async def test_spend_short_balance_is_409_and_writes_no_transaction(client, pool, make_user):
    user = await make_user(GOLD_COINS=10)
    before = await ledger_counts(pool)
    response = await client.post(SPEND, json=body(user, 11), headers={"Idempotency-Key": new_key()})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "insufficient_funds"
    assert response.json()["error"]["field"] == "amount"
    transactions, entries, _ = await ledger_counts(pool)
    assert (transactions, entries) == before[:2]
    assert await balance_of(client, user) == 10


async def test_spend_of_exact_balance_reaches_zero(client, make_user):
    user = await make_user(GOLD_COINS=7)
    response = await client.post(SPEND, json=body(user, 7), headers={"Idempotency-Key": new_key()})
    assert response.status_code == 201
    assert response.json()["balance_after"] == 0


async def test_get_transaction_returns_the_same_document_as_the_write(client, make_user):
    user = await make_user()
    created = await client.post(TOPUP, json=body(user, 3), headers={"Idempotency-Key": new_key()})
    fetched = await client.get(f"/api/v1/transactions/{created.json()['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == created.json()


async def test_unknown_transaction_is_404(client):
    for transaction_id in (str(uuid.uuid4()), "not-a-uuid"):
        response = await client.get(f"/api/v1/transactions/{transaction_id}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "transaction_not_found"


async def test_unknown_user_or_asset_is_404_and_writes_nothing(client, pool, make_user):
    user = await make_user()
    before = await ledger_counts(pool)
    missing_user = await client.post(
        TOPUP, json=body("nobody_here", 1), headers={"Idempotency-Key": new_key()}
    )
    assert missing_user.status_code == 404
    assert missing_user.json()["error"] == {
        "code": "user_not_found",
        "message": "no user with id nobody_here",
        "field": "user_id",
    }
    missing_asset = await client.post(
        TOPUP, json=body(user, 1, asset="SILVER"), headers={"Idempotency-Key": new_key()}
    )
    assert missing_asset.status_code == 404
    assert missing_asset.json()["error"]["code"] == "asset_type_not_found"
    assert missing_asset.json()["error"]["field"] == "asset_type"
    assert await ledger_counts(pool) == before


# --- Idempotency ------------------------------------------------------------------------------


async def test_same_key_same_payload_replays_original_status_and_body(client, pool, make_user):
    user = await make_user()
    key = new_key()
    first = await client.post(TOPUP, json=body(user, 40), headers={"Idempotency-Key": key})
    before = await ledger_counts(pool)
    second = await client.post(TOPUP, json=body(user, 40), headers={"Idempotency-Key": key})
    assert second.status_code == 201
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.content == first.content
    assert await ledger_counts(pool) == before
    assert await balance_of(client, user) == 40


async def test_key_in_body_works_like_the_header(client, make_user):
    user = await make_user()
    key = new_key()
    first = await client.post(TOPUP, json=body(user, 2, idempotency_key=key))
    second = await client.post(TOPUP, json=body(user, 2), headers={"Idempotency-Key": key})
    assert first.status_code == 201
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert second.json()["id"] == first.json()["id"]
    conflicting = await client.post(
        TOPUP, json=body(user, 2, idempotency_key=key), headers={"Idempotency-Key": new_key()}
    )
    assert conflicting.status_code == 422
    assert conflicting.json()["error"]["field"] == "idempotency_key"


async def test_failed_spend_replays_the_original_error(client, make_user):
    user = await make_user(GOLD_COINS=5)
    key = new_key()
    first = await client.post(SPEND, json=body(user, 6), headers={"Idempotency-Key": key})
    assert first.status_code == 409
    # Even after the balance would now cover it, the key's answer stays the original one.
    await client.post(TOPUP, json=body(user, 100), headers={"Idempotency-Key": new_key()})
    second = await client.post(SPEND, json=body(user, 6), headers={"Idempotency-Key": key})
    assert second.status_code == 409
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert await balance_of(client, user) == 105


async def test_same_key_different_payload_is_422_and_writes_nothing(client, pool, make_user):
    user = await make_user()
    key = new_key()
    await client.post(TOPUP, json=body(user, 10), headers={"Idempotency-Key": key})
    before = await ledger_counts(pool)
    for changed in (body(user, 11), body(user, 10, metadata={"x": 1}), body(user, 10, asset="DIAMONDS")):
        response = await client.post(TOPUP, json=changed, headers={"Idempotency-Key": key})
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "idempotency_key_reused"
    # The same key on another endpoint is another request too.
    response = await client.post(BONUS, json=body(user, 10), headers={"Idempotency-Key": key})
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert await ledger_counts(pool) == before
    assert await balance_of(client, user) == 10


async def test_metadata_key_order_does_not_change_the_request(client, make_user):
    user = await make_user()
    key = new_key()
    first = await client.post(
        TOPUP,
        content=(f'{{"user_id":"{user}","asset_type":"GOLD_COINS","amount":1,"metadata":{{"a":1,"b":2}}}}'),
        headers={"Idempotency-Key": key, "Content-Type": "application/json"},
    )
    second = await client.post(
        TOPUP,
        content=(f'{{"metadata":{{"b":2,"a":1}},"amount":1,"asset_type":"GOLD_COINS","user_id":"{user}"}}'),
        headers={"Idempotency-Key": key, "Content-Type": "application/json"},
    )
    assert first.status_code == 201
    assert second.status_code == 201
    assert second.headers["Idempotent-Replayed"] == "true"


async def test_keys_are_scoped_per_api_key(app, keys, client, make_user):
    user = await make_user()
    key = new_key()
    first = await client.post(TOPUP, json=body(user, 1), headers={"Idempotency-Key": key})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://t",
        headers={"Authorization": f"Bearer {keys['credit']}"},
    ) as other:
        second = await other.post(TOPUP, json=body(user, 1), headers={"Idempotency-Key": key})
    assert second.status_code == 201
    assert "Idempotent-Replayed" not in second.headers
    assert second.json()["id"] != first.json()["id"]
    assert await balance_of(client, user) == 2


async def test_missing_idempotency_key_is_400_and_writes_nothing(client, pool, make_user):
    user = await make_user()
    before = await ledger_counts(pool)
    response = await client.post(TOPUP, json=body(user, 1))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "idempotency_key_missing"
    assert response.json()["error"]["field"] == "idempotency_key"
    assert await ledger_counts(pool) == before


# --- Batch ----------------------------------------------------------------------------------


async def test_batch_posts_all_operations_in_order(client, make_user):
    alice, bob = await make_user(GOLD_COINS=10), await make_user()
    request = {
        "operations": [
            {"type": "spend", "user_id": alice, "asset_type": "GOLD_COINS", "amount": 10},
            {"type": "topup", "user_id": bob, "asset_type": "GOLD_COINS", "amount": 10},
            {"type": "bonus", "user_id": alice, "asset_type": "GOLD_COINS", "amount": 3},
        ]
    }
    key = new_key()
    response = await client.post(BATCH, json=request, headers={"Idempotency-Key": key})
    assert response.status_code == 201, response.text
    posted = response.json()["transactions"]
    assert [t["type"] for t in posted] == ["spend", "topup", "bonus"]
    assert [t["balance_after"] for t in posted] == [0, 10, 3]
    assert await balance_of(client, alice) == 3
    assert await balance_of(client, bob) == 10
    # Each is the document GET shows (entries, lots and all), and a retry replays the same body.
    for document in posted:
        assert (await client.get(f"/api/v1/transactions/{document['id']}")).json() == document
    assert [len(t["lots"]) for t in posted] == [1, 1, 1]
    assert [len(t["entries"]) for t in posted] == [2, 2, 2]
    replay = await client.post(BATCH, json=request, headers={"Idempotency-Key": key})
    assert replay.status_code == 201 and replay.json() == response.json()


async def test_batch_is_all_or_nothing(client, pool, make_user):
    alice = await make_user(GOLD_COINS=5)
    before = await ledger_counts(pool)
    response = await client.post(
        BATCH,
        json={
            "operations": [
                {"type": "topup", "user_id": alice, "asset_type": "GOLD_COINS", "amount": 1},
                {"type": "spend", "user_id": alice, "asset_type": "GOLD_COINS", "amount": 7},
            ]
        },
        headers={"Idempotency-Key": new_key()},
    )
    assert response.status_code == 409
    assert response.json()["error"]["field"] == "operations[1].amount"
    assert (await ledger_counts(pool))[:2] == before[:2]
    assert await balance_of(client, alice) == 5


async def test_batch_limits_and_scopes(app, keys, client, make_user, settings):
    user = await make_user()
    too_many = [{"type": "topup", "user_id": user, "asset_type": "GOLD_COINS", "amount": 1}] * (
        settings.max_batch_operations + 1
    )
    response = await client.post(BATCH, json={"operations": too_many}, headers={"Idempotency-Key": new_key()})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "operations"
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://t",
        headers={"Authorization": f"Bearer {keys['credit']}"},
    ) as credit_only:
        response = await credit_only.post(
            BATCH,
            json={
                "operations": [{"type": "spend", "user_id": user, "asset_type": "GOLD_COINS", "amount": 1}]
            },
            headers={"Idempotency-Key": new_key()},
        )
    assert response.status_code == 403
