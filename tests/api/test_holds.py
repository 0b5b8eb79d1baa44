"""Holds over HTTP: place, capture (full, partial, at most once), void, expiry, and what each does
to balance, held and available."""

from __future__ import annotations

from datetime import datetime

from tests.support import new_key, wait_past

HOLDS = "/api/v1/holds"


async def _assets(client, user: str) -> dict[str, dict]:
    response = await client.get(f"/api/v1/wallets/{user}/balance")
    assert response.status_code == 200, response.text
    return {b["asset_type"]: b for b in response.json()["balances"]}


async def _hold(client, user: str, amount: int, **extra) -> dict:
    response = await client.post(
        HOLDS,
        headers={"Idempotency-Key": new_key()},
        json={"user_id": user, "asset_type": "GOLD_COINS", "amount": amount, **extra},
    )
    assert response.status_code == 201, response.text
    return response.json()


async def _past_expiry(pool, hold: dict) -> None:
    """Until the database's clock, which expiry is judged by, has passed the hold's expiry."""
    await wait_past(pool, datetime.fromisoformat(hold["expires_at"]))


async def test_a_hold_reserves_credits_that_spends_and_new_holds_cannot_use(client, make_user):
    user = await make_user(GOLD_COINS=100)
    hold = await _hold(client, user, 70)
    assert hold["status"] == "open" and hold["amount"] == 70
    gold = (await _assets(client, user))["GOLD_COINS"]
    assert (gold["balance"], gold["held"], gold["available"]) == (100, 70, 30)
    spend = await client.post(
        "/api/v1/transactions/spend",
        headers={"Idempotency-Key": new_key()},
        json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 31},
    )
    assert spend.status_code == 409 and spend.json()["error"]["code"] == "insufficient_funds"
    second = await client.post(
        HOLDS,
        headers={"Idempotency-Key": new_key()},
        json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 31},
    )
    assert second.status_code == 409 and second.json()["error"]["code"] == "insufficient_funds"
    listed = (await client.get(f"/api/v1/wallets/{user}/holds")).json()["data"]
    assert [h["id"] for h in listed] == [hold["id"]]


async def test_partial_capture_spends_part_and_releases_the_rest_once(client, make_user):
    user = await make_user(GOLD_COINS=100)
    hold = await _hold(client, user, 60)
    capture = await client.post(
        f"{HOLDS}/{hold['id']}/capture", headers={"Idempotency-Key": new_key()}, json={"amount": 45}
    )
    assert capture.status_code == 201, capture.text
    transaction = capture.json()
    assert (
        transaction["type"] == "capture"
        and transaction["amount"] == 45
        and transaction["hold_id"] == hold["id"]
    )
    assert transaction["balance_after"] == 55
    gold = (await _assets(client, user))["GOLD_COINS"]
    assert (gold["balance"], gold["held"], gold["available"]) == (55, 0, 55)
    shown = (await client.get(f"{HOLDS}/{hold['id']}")).json()
    assert shown["status"] == "captured" and shown["captured_amount"] == 45
    assert shown["capture_transaction_id"] == transaction["id"]
    again = await client.post(f"{HOLDS}/{hold['id']}/capture", headers={"Idempotency-Key": new_key()})
    assert again.status_code == 409 and again.json()["error"]["code"] == "hold_already_captured"
    void = await client.post(f"{HOLDS}/{hold['id']}/void", headers={"Idempotency-Key": new_key()})
    assert void.status_code == 409 and void.json()["error"]["code"] == "hold_already_captured"


async def test_capture_defaults_to_the_whole_hold_and_refuses_more(client, make_user):
    user = await make_user(GOLD_COINS=100)
    hold = await _hold(client, user, 40)
    too_much = await client.post(
        f"{HOLDS}/{hold['id']}/capture", headers={"Idempotency-Key": new_key()}, json={"amount": 41}
    )
    assert too_much.status_code == 409 and too_much.json()["error"]["code"] == "amount_exceeds_hold"
    whole = await client.post(f"{HOLDS}/{hold['id']}/capture", headers={"Idempotency-Key": new_key()})
    assert whole.status_code == 201 and whole.json()["amount"] == 40
    assert (await _assets(client, user))["GOLD_COINS"]["balance"] == 60


async def test_void_releases_and_a_second_void_or_capture_is_refused(client, make_user):
    user = await make_user(GOLD_COINS=50)
    hold = await _hold(client, user, 50)
    key = new_key()
    void = await client.post(f"{HOLDS}/{hold['id']}/void", headers={"Idempotency-Key": key})
    assert void.status_code == 200 and void.json()["status"] == "voided"
    replay = await client.post(f"{HOLDS}/{hold['id']}/void", headers={"Idempotency-Key": key})
    assert replay.status_code == 200 and replay.content == void.content
    assert replay.headers["Idempotent-Replayed"] == "true"
    gold = (await _assets(client, user))["GOLD_COINS"]
    assert (gold["balance"], gold["held"], gold["available"]) == (50, 0, 50)
    for action, code in (("void", "hold_already_voided"), ("capture", "hold_already_voided")):
        response = await client.post(f"{HOLDS}/{hold['id']}/{action}", headers={"Idempotency-Key": new_key()})
        assert response.status_code == 409 and response.json()["error"]["code"] == code


async def test_an_expired_hold_stops_counting_at_once_and_cannot_be_captured(client, make_user, pool):
    user = await make_user(GOLD_COINS=30)
    hold = await _hold(client, user, 30, expires_in_seconds=1)
    assert (await _assets(client, user))["GOLD_COINS"]["available"] == 0
    await _past_expiry(pool, hold)
    # No job has run (the sweeper is off in tests): the hold counts for nothing already.
    gold = (await _assets(client, user))["GOLD_COINS"]
    assert (gold["held"], gold["available"]) == (0, 30)
    assert (await client.get(f"{HOLDS}/{hold['id']}")).json()["status"] == "expired"
    spend = await client.post(
        "/api/v1/transactions/spend",
        headers={"Idempotency-Key": new_key()},
        json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 30},
    )
    assert spend.status_code == 201, spend.text
    capture = await client.post(f"{HOLDS}/{hold['id']}/capture", headers={"Idempotency-Key": new_key()})
    assert capture.status_code == 409 and capture.json()["error"]["code"] == "hold_expired"


async def test_the_sweep_marks_expired_holds_and_releases_them(client, make_user, pool):
    from wallet.services.holds import sweep_expired_holds

    user = await make_user(GOLD_COINS=20)
    hold = await _hold(client, user, 20, expires_in_seconds=1)
    await _past_expiry(pool, hold)
    assert await sweep_expired_holds(pool, 10_000) >= 1
    row = await pool.fetchrow(
        "SELECT h.status, a.held_minor FROM holds h JOIN accounts a ON a.id = h.account_id WHERE h.id = $1",
        __import__("uuid").UUID(hold["id"]),
    )
    assert (row["status"], row["held_minor"]) == ("expired", 0)


async def test_hold_errors(client, admin, make_user):
    user = await make_user(GOLD_COINS=10)
    cases = [
        ({"user_id": "nobody_x", "asset_type": "GOLD_COINS", "amount": 1}, 404, "user_not_found"),
        ({"user_id": user, "asset_type": "NOPE", "amount": 1}, 404, "asset_type_not_found"),
        ({"user_id": user, "asset_type": "GOLD_COINS", "amount": 0}, 422, "validation_error"),
        (
            {"user_id": user, "asset_type": "GOLD_COINS", "amount": 1, "expires_in_seconds": 10**8},
            422,
            "limit_exceeded",
        ),
    ]
    for body, status, code in cases:
        response = await client.post(HOLDS, headers={"Idempotency-Key": new_key()}, json=body)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), body
    missing = await client.post(
        f"{HOLDS}/00000000-0000-0000-0000-000000000000/void", headers={"Idempotency-Key": new_key()}
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "hold_not_found"
    garbage = await client.get(f"{HOLDS}/not-a-uuid")
    assert garbage.status_code == 404 and garbage.json()["error"]["code"] == "hold_not_found"
    no_key = await client.post(HOLDS, json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 1})
    assert no_key.status_code == 400 and no_key.json()["error"]["code"] == "idempotency_key_missing"


async def test_expired_holds_do_not_make_a_batch_or_a_transfer_short(client, admin, make_user, pool):
    user, other = await make_user(GOLD_COINS=30), await make_user()
    await _past_expiry(pool, await _hold(client, user, 30, expires_in_seconds=1))
    batch = await client.post(
        "/api/v1/transactions/batch",
        headers={"Idempotency-Key": new_key()},
        json={"operations": [{"type": "spend", "user_id": user, "asset_type": "GOLD_COINS", "amount": 20}]},
    )
    assert batch.status_code == 201, batch.text
    await _past_expiry(pool, await _hold(client, user, 10, expires_in_seconds=1))
    transfer = await admin.post(
        "/api/v1/transactions/transfer",
        headers={"Idempotency-Key": new_key()},
        json={"from_user_id": user, "to_user_id": other, "asset_type": "GOLD_COINS", "amount": 10},
    )
    assert transfer.status_code == 201, transfer.text
    gold = (await _assets(client, user))["GOLD_COINS"]
    assert (gold["balance"], gold["held"]) == (0, 0)


async def test_a_capture_after_an_admin_clawback_into_debt_meets_insufficient_funds(admin, make_user, pool):
    """A hold reserves credits, but an admin clawback with allow_negative may take them anyway:
    the capture is then refused (409 insufficient_funds, as the README says), the hold stays
    open, and a void releases it."""
    user = await make_user()
    topup = await admin.post(
        "/api/v1/transactions/topup",
        headers={"Idempotency-Key": new_key()},
        json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 100},
    )
    hold = await admin.post(
        "/api/v1/holds",
        headers={"Idempotency-Key": new_key()},
        json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 60},
    )
    clawback = await admin.post(
        f"/api/v1/transactions/{topup.json()['id']}/reverse",
        headers={"Idempotency-Key": new_key()},
        json={"allow_negative": True},
    )
    assert clawback.status_code == 201, clawback.text
    for body in ({}, {"amount": 1}):
        capture = await admin.post(
            f"/api/v1/holds/{hold.json()['id']}/capture", headers={"Idempotency-Key": new_key()}, json=body
        )
        assert capture.status_code == 409 and capture.json()["error"]["code"] == "insufficient_funds"
    assert (await admin.get(f"/api/v1/holds/{hold.json()['id']}")).json()["status"] == "open"
    void = await admin.post(f"/api/v1/holds/{hold.json()['id']}/void", headers={"Idempotency-Key": new_key()})
    assert void.status_code == 200 and void.json()["status"] == "voided"
