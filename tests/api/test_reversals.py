"""Reversals over HTTP: refunds of spends, clawbacks of top-ups and bonuses, partial reversals up
to the original amount, debts only for admins, and the links between original and reversal."""

from __future__ import annotations

import httpx

from tests.support import new_key

TX = "/api/v1/transactions"


async def _post(client, kind: str, user: str, amount: int, asset: str = "GOLD_COINS") -> dict:
    response = await client.post(
        f"{TX}/{kind}",
        headers={"Idempotency-Key": new_key()},
        json={"user_id": user, "asset_type": asset, "amount": amount},
    )
    assert response.status_code == 201, response.text
    return response.json()


async def _reverse(client, transaction_id: str, **body) -> httpx.Response:
    return await client.post(
        f"{TX}/{transaction_id}/reverse", headers={"Idempotency-Key": new_key()}, json=body
    )


async def _balance(client, user: str, asset: str = "GOLD_COINS") -> dict:
    balances = (await client.get(f"/api/v1/wallets/{user}/balance")).json()["balances"]
    return next(b for b in balances if b["asset_type"] == asset)


async def test_refund_of_a_spend_gives_credits_back_and_links_both_ways(client, admin, make_user):
    user = await make_user(GOLD_COINS=100)
    spend = await _post(client, "spend", user, 40)
    response = await _reverse(admin, spend["id"], reason="item not delivered", metadata={"ticket": "T-1"})
    assert response.status_code == 201, response.text
    refund = response.json()
    assert refund["type"] == "refund" and refund["reverses"] == spend["id"] and refund["amount"] == 40
    assert refund["description"] == "item not delivered" and refund["balance_after"] == 100
    assert [e["amount"] for e in refund["entries"]] == [40, -40]
    assert refund["entries"][1]["account"] == "SYSTEM_REVENUE"
    original = (await client.get(f"{TX}/{spend['id']}")).json()
    assert original["reversed_amount"] == 40
    history = (await client.get(f"/api/v1/wallets/{user}/transactions")).json()["data"]
    assert [t["type"] for t in history[:2]] == ["refund", "spend"]


async def test_partial_reversals_repeat_until_the_original_is_used_up(client, admin, make_user):
    user = await make_user()
    topup = await _post(admin, "topup", user, 100)
    assert (await _reverse(admin, topup["id"], amount=30)).status_code == 201
    assert (await _reverse(admin, topup["id"], amount=50)).status_code == 201
    too_much = await _reverse(admin, topup["id"], amount=21)
    assert too_much.status_code == 409 and too_much.json()["error"]["code"] == "amount_exceeds_reversible"
    rest = await _reverse(admin, topup["id"])  # no amount: all that is left
    assert rest.status_code == 201 and rest.json()["amount"] == 20 and rest.json()["type"] == "clawback"
    done = await _reverse(admin, topup["id"], amount=1)
    assert done.status_code == 409 and done.json()["error"]["code"] == "amount_exceeds_reversible"
    assert (await client.get(f"{TX}/{topup['id']}")).json()["reversed_amount"] == 100
    assert (await _balance(client, user))["balance"] == 0


async def test_clawback_the_user_cannot_cover_needs_an_admin_and_leaves_a_debt(
    app, client, admin, keys, make_user
):
    user = await make_user()
    bonus = await _post(admin, "bonus", user, 50)
    await _post(client, "spend", user, 45)
    # 5 of the bonus is left: a clawback takes no more of the user's credits without a debt.
    short = await _reverse(admin, bonus["id"], amount=50)
    assert short.status_code == 409 and short.json()["error"]["code"] == "amount_exceeds_clawable"
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://wallet.test",
        headers={"Authorization": f"Bearer {keys['reverse']}"},
    ) as reverser:
        forbidden = await _reverse(reverser, bonus["id"], allow_negative=True)
        assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"
        partial = await _reverse(reverser, bonus["id"], amount=5)
        assert partial.status_code == 201
    debt = await _reverse(admin, bonus["id"], allow_negative=True)
    assert debt.status_code == 201, debt.text
    assert debt.json()["amount"] == 45 and debt.json()["balance_after"] == -45
    gold = await _balance(client, user)
    assert (gold["balance"], gold["debt"], gold["available"]) == (-45, 45, -45)
    # The debt is repaid first by the next credits, and nothing can be spent meanwhile.
    blocked = await client.post(
        f"{TX}/spend",
        headers={"Idempotency-Key": new_key()},
        json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 1},
    )
    assert blocked.status_code == 409
    await _post(admin, "topup", user, 60)
    gold = await _balance(client, user)
    assert (gold["balance"], gold["debt"], gold["available"]) == (15, 0, 15)


async def test_what_cannot_be_reversed(client, admin, make_user):
    alice, bob = await make_user(GOLD_COINS=100), await make_user()
    transfer = await admin.post(
        f"{TX}/transfer",
        headers={"Idempotency-Key": new_key()},
        json={"from_user_id": alice, "to_user_id": bob, "asset_type": "GOLD_COINS", "amount": 10},
    )
    assert transfer.status_code == 201
    refused = await _reverse(admin, transfer.json()["id"])
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "not_reversible"
    spend = await _post(client, "spend", alice, 10)
    refund = (await _reverse(admin, spend["id"])).json()
    again = await _reverse(admin, refund["id"])
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_reversible"
    for missing in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        response = await _reverse(admin, missing)
        assert response.status_code == 404 and response.json()["error"]["code"] == "transaction_not_found"
    no_scope = await _reverse(client, spend["id"])
    assert no_scope.status_code == 403


async def test_a_reversal_is_idempotent(client, admin, make_user):
    user = await make_user(GOLD_COINS=100)
    spend = await _post(client, "spend", user, 30)
    key = new_key()
    first = await admin.post(
        f"{TX}/{spend['id']}/reverse", headers={"Idempotency-Key": key}, json={"amount": 10}
    )
    second = await admin.post(
        f"{TX}/{spend['id']}/reverse", headers={"Idempotency-Key": key}, json={"amount": 10}
    )
    assert first.status_code == second.status_code == 201
    assert second.content == first.content and second.headers["Idempotent-Replayed"] == "true"
    other = await admin.post(
        f"{TX}/{spend['id']}/reverse", headers={"Idempotency-Key": key}, json={"amount": 11}
    )
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert (await client.get(f"{TX}/{spend['id']}")).json()["reversed_amount"] == 10
