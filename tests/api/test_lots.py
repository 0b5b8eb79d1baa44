"""Credit lots over HTTP: the spend order of each policy, what refunds, transfers, clawbacks and
captures do to lots, the balance breakdown, and the inputs of an expiring bonus.

Each test runs on an asset of its own (created here, with the lot policy it needs), so no other
test's activity is in its figures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support import asset_balance, db_now, new_key, post, wait_past
from wallet.services.lots import expire_due

TX = "/api/v1/transactions"


def draws(transaction: dict[str, Any]) -> list[tuple[str, int]]:
    return [(lot["origin"], lot["amount"]) for lot in transaction["lots"]]


@pytest.mark.parametrize(
    ("spend_order", "expected"),
    [
        # Lots: G3 granted 50 (expires in 3 h, created first), P purchased 100 (expires in 2 h),
        # G granted 30 (no expiry). A spend of 120 takes:
        ("granted_first", [("granted", -50), ("granted", -30), ("purchased", -40)]),
        ("purchased_first", [("purchased", -100), ("granted", -20)]),
        ("expiring_first", [("purchased", -100), ("granted", -20)]),
        ("fifo", [("granted", -50), ("purchased", -70)]),
    ],
)
async def test_a_spend_draws_lots_in_the_assets_spend_order(
    admin, client, make_user, lot_asset, spend_order, expected
):
    asset = await lot_asset(spend_order=spend_order, purchased_expires_in_seconds=2 * 3600)
    user = await make_user()
    first = await post(admin, "bonus", user_id=user, asset_type=asset, amount=50, expires_in_seconds=3 * 3600)
    await post(admin, "topup", user_id=user, asset_type=asset, amount=100)
    await post(admin, "bonus", user_id=user, asset_type=asset, amount=30)
    (bonus_lot,) = first["lots"]
    assert bonus_lot["origin"] == "granted" and bonus_lot["amount"] == 50 and bonus_lot["expires_at"]

    spend = await post(client, "spend", user_id=user, asset_type=asset, amount=120)
    assert draws(spend) == expected
    assert sum(amount for _, amount in draws(spend)) == -120
    # The history shows the same lots, and the breakdown what is left of each origin.
    stored = (await client.get(f"{TX}/{spend['id']}")).json()
    assert stored["lots"] == spend["lots"]
    left = await asset_balance(client, user, asset)
    granted_left = 80 + sum(amount for origin, amount in expected if origin == "granted")
    assert (left["balance"], left["granted"], left["purchased"]) == (60, granted_left, 60 - granted_left)


async def test_the_balance_splits_into_purchased_and_granted_with_the_next_expiry(
    admin, client, make_user, lot_asset
):
    asset = await lot_asset()
    user = await make_user()
    empty = await asset_balance(client, user, asset)
    assert (empty["balance"], empty["purchased"], empty["granted"], empty["next_expiry"]) == (0, 0, 0, None)
    await post(admin, "topup", user_id=user, asset_type=asset, amount=70)
    at = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=123456)
    await post(admin, "bonus", user_id=user, asset_type=asset, amount=25, expires_at=at.isoformat())
    await post(admin, "bonus", user_id=user, asset_type=asset, amount=5, expires_in_seconds=10 * 86400)
    balance = await asset_balance(client, user, asset)
    assert (balance["balance"], balance["purchased"], balance["granted"]) == (100, 70, 30)
    assert balance["next_expiry"] == {"amount": 25, "at": at.isoformat().replace("+00:00", "Z")}


async def test_a_lot_is_one_per_origin_and_expiry_whatever_the_number_of_credits(
    admin, pool, make_user, lot_asset
):
    asset = await lot_asset()
    user = await make_user()
    at = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    credited = [await post(admin, "topup", user_id=user, asset_type=asset, amount=10) for _ in range(3)]
    credited += [
        await post(admin, "bonus", user_id=user, asset_type=asset, amount=1, expires_at=at) for _ in range(2)
    ]
    lot_ids = {c["lots"][0]["lot_id"] for c in credited}
    assert len(lot_ids) == 2
    rows = await pool.fetch(
        "SELECT l.origin, l.remaining_minor FROM credit_lots l JOIN accounts a ON a.id = l.account_id"
        " WHERE a.user_id = $1 AND a.asset_code = $2 ORDER BY l.origin",
        user,
        asset,
    )
    assert [tuple(r) for r in rows] == [("granted", 2), ("purchased", 30)]


async def test_refunds_restore_what_the_spend_drew_last_first(admin, client, make_user, lot_asset):
    asset = await lot_asset()
    user = await make_user()
    await post(admin, "bonus", user_id=user, asset_type=asset, amount=50, expires_in_seconds=3600)
    await post(admin, "topup", user_id=user, asset_type=asset, amount=100)
    spend = await post(client, "spend", user_id=user, asset_type=asset, amount=80)
    assert draws(spend) == [("granted", -50), ("purchased", -30)]
    refunds = []
    for amount in (20, 25, 35):
        refunds.append(draws(await post(admin, f"{spend['id']}/reverse", amount=amount)))
    # Last drawn first: the purchased 30, then the granted 50; each refund after the previous.
    assert refunds == [[("purchased", 20)], [("purchased", 10), ("granted", 15)], [("granted", 35)]]
    restored = [lot for r in refunds for lot in r]
    assert {lot for lot in restored if lot[0] == "granted"}
    balance = await asset_balance(client, user, asset)
    assert (balance["balance"], balance["purchased"], balance["granted"]) == (150, 100, 50)


async def test_a_transfer_passes_on_the_senders_lots_and_the_fee_is_their_tail(
    admin, client, make_user, lot_asset
):
    asset = await lot_asset()
    alice, bob = await make_user(), await make_user()
    bonus = await post(admin, "bonus", user_id=alice, asset_type=asset, amount=10, expires_in_seconds=7200)
    await post(admin, "topup", user_id=alice, asset_type=asset, amount=100)
    transfer = await post(
        admin, "transfer", from_user_id=alice, to_user_id=bob, asset_type=asset, amount=20, fee=2
    )
    # Alice's draws (granted first), then Bob's lots: the same origins and expiry, without the fee.
    assert draws(transfer) == [("granted", -10), ("purchased", -12), ("granted", 10), ("purchased", 10)]
    assert transfer["lots"][2]["expires_at"] == bonus["lots"][0]["expires_at"]
    received = await asset_balance(client, bob, asset)
    assert (received["balance"], received["purchased"], received["granted"]) == (20, 10, 10)
    assert received["next_expiry"]["amount"] == 10


async def test_a_clawback_takes_the_lots_its_original_filled_first(admin, client, make_user, lot_asset):
    asset = await lot_asset()
    user = await make_user()
    topup = await post(admin, "topup", user_id=user, asset_type=asset, amount=40)
    await post(admin, "bonus", user_id=user, asset_type=asset, amount=60)
    first = await post(admin, f"{topup['id']}/reverse", amount=30)
    assert draws(first) == [("purchased", -30)]  # not the granted lot the order would take
    assert draws(await post(admin, f"{topup['id']}/reverse")) == [("purchased", -10)]
    balance = await asset_balance(client, user, asset)
    assert (balance["balance"], balance["purchased"], balance["granted"]) == (60, 0, 60)


async def test_credits_to_a_user_in_debt_fill_lots_only_past_the_debt(admin, client, make_user, lot_asset):
    asset = await lot_asset()
    user = await make_user()
    topup = await post(admin, "topup", user_id=user, asset_type=asset, amount=30)
    await post(client, "spend", user_id=user, asset_type=asset, amount=20)
    clawback = await post(admin, f"{topup['id']}/reverse", amount=30, allow_negative=True)
    assert draws(clawback) == [("purchased", -10)]  # all there was
    debt = await asset_balance(client, user, asset)
    assert (debt["balance"], debt["debt"], debt["purchased"], debt["granted"]) == (-20, 20, -20, 0)
    bonus = await post(admin, "bonus", user_id=user, asset_type=asset, amount=50)
    assert draws(bonus) == [("granted", 30)]
    balance = await asset_balance(client, user, asset)
    assert (balance["balance"], balance["purchased"], balance["granted"]) == (30, 0, 30)


async def test_batches_fill_and_draw_lots_in_operation_order(admin, make_user, lot_asset):
    asset = await lot_asset()
    user = await make_user()
    at = (datetime.now(UTC) + timedelta(hours=5)).isoformat(timespec="microseconds")
    response = await admin.post(
        f"{TX}/batch",
        headers={"Idempotency-Key": new_key()},
        json={
            "operations": [
                {"type": "topup", "user_id": user, "asset_type": asset, "amount": 10},
                {"type": "bonus", "user_id": user, "asset_type": asset, "amount": 5, "expires_at": at},
                {"type": "spend", "user_id": user, "asset_type": asset, "amount": 7},
            ]
        },
    )
    assert response.status_code == 201, response.text
    topup, bonus, spend = response.json()["transactions"]
    assert draws(topup) == [("purchased", 10)] and draws(bonus) == [("granted", 5)]
    assert bonus["lots"][0]["expires_at"] == at.replace("+00:00", "Z")
    assert draws(spend) == [("granted", -5), ("purchased", -2)]


async def test_an_expiring_bonus_is_checked_and_retried_like_any_write(admin, pool, make_user, lot_asset):
    asset = await lot_asset()
    user = await make_user()
    base = {"user_id": user, "asset_type": asset, "amount": 5}
    past = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    cases = [
        ("bonus", {**base, "expires_at": past}, 422, "expires_at"),
        ("bonus", {**base, "expires_at": "2030-01-01T00:00:00"}, 422, "expires_at"),  # no zone
        ("bonus", {**base, "expires_in_seconds": 0}, 422, "expires_in_seconds"),
        ("bonus", {**base, "expires_in_seconds": 11 * 366 * 86400}, 422, "expires_in_seconds"),
        ("bonus", {**base, "expires_at": "2999-01-01T00:00:00Z"}, 422, "expires_at"),
        (
            "bonus",
            {**base, "expires_in_seconds": 60, "expires_at": "2030-01-01T00:00:00Z"},
            422,
            "expires_in_seconds",
        ),
        ("topup", {**base, "expires_in_seconds": 60}, 422, "expires_in_seconds"),
        ("spend", {**base, "expires_in_seconds": 60}, 422, "expires_in_seconds"),
    ]
    before = await pool.fetchval("SELECT count(*) FROM transactions WHERE user_id = $1", user)
    for kind, body, status, field in cases:
        response = await admin.post(f"{TX}/{kind}", headers={"Idempotency-Key": new_key()}, json=body)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert error["code"] == "validation_error" and error["field"] == field, (body, error)
    batch = await admin.post(
        f"{TX}/batch",
        headers={"Idempotency-Key": new_key()},
        json={"operations": [{"type": "spend", **base, "expires_in_seconds": 60}]},
    )
    assert batch.status_code == 422 and batch.json()["error"]["field"] == "operations[0].expires_in_seconds"
    assert await pool.fetchval("SELECT count(*) FROM transactions WHERE user_id = $1", user) == before

    # The shortest expiry there is: one second from the moment it is written.
    shortest = await post(admin, "bonus", **base, expires_in_seconds=1)
    written = datetime.fromisoformat(shortest["created_at"])
    expires = datetime.fromisoformat(shortest["lots"][0]["expires_at"])
    assert abs(expires - written - timedelta(seconds=1)) < timedelta(milliseconds=50)

    key = new_key()
    first = await admin.post(
        f"{TX}/bonus", headers={"Idempotency-Key": key}, json={**base, "expires_in_seconds": 60}
    )
    again = await admin.post(
        f"{TX}/bonus", headers={"Idempotency-Key": key}, json={**base, "expires_in_seconds": 60}
    )
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true" and again.content == first.content
    other = await admin.post(
        f"{TX}/bonus", headers={"Idempotency-Key": key}, json={**base, "expires_in_seconds": 61}
    )
    assert other.json()["error"]["code"] == "idempotency_key_reused", other.text
    without = await admin.post(f"{TX}/bonus", headers={"Idempotency-Key": key}, json=base)
    assert without.json()["error"]["code"] == "idempotency_key_reused", without.text


async def test_expired_credits_stop_counting_at_their_expiry_before_any_task_runs(
    admin, client, pool, make_user, lot_asset
):
    asset = await lot_asset()
    user = await make_user()
    await post(admin, "topup", user_id=user, asset_type=asset, amount=10)
    at = (await db_now(pool)) + timedelta(seconds=1.5)
    bonus = await post(admin, "bonus", user_id=user, asset_type=asset, amount=40, expires_at=at.isoformat())
    assert bonus["lots"][0]["expires_at"] == at.isoformat(timespec="microseconds").replace("+00:00", "Z")
    # Before the instant: there, and spendable.
    assert await db_now(pool) < at - timedelta(seconds=0.3)
    early = await asset_balance(client, user, asset)
    assert (early["available"], early["granted"], early["next_expiry"]["amount"]) == (50, 40, 40)
    await post(client, "spend", user_id=user, asset_type=asset, amount=1)
    # From the instant on (expires_at <= now): gone from the balance, before anything is posted.
    await wait_past(pool, at)
    late = await asset_balance(client, user, asset)
    assert (late["balance"], late["available"], late["purchased"], late["granted"], late["next_expiry"]) == (
        10, 10, 10, 0, None,
    )  # fmt: skip
    assert (
        await pool.fetchval("SELECT count(*) FROM transactions WHERE user_id = $1 AND type = 'expiry'", user)
        == 0
    )
    short = await post(client, "spend", 409, user_id=user, asset_type=asset, amount=11)
    assert short["error"]["code"] == "insufficient_funds"
    # That spend expired the lot under the account's lock, in an expiry transaction of its own.
    history = (await client.get(f"/api/v1/wallets/{user}/transactions", params={"type": "expiry"})).json()[
        "data"
    ]
    (expiry,) = history
    assert expiry["amount"] == 39 and expiry["balance_after"] == 10 and draws(expiry) == [("granted", -39)]
    assert [e["account"] for e in expiry["entries"]] == [user, "SYSTEM_BREAKAGE"]
    await post(client, "spend", user_id=user, asset_type=asset, amount=10)


async def test_a_hold_keeps_expiring_credits_it_reserves_until_captured(
    admin, client, pool, settings, make_user, lot_asset
):
    asset = await lot_asset()
    user = await make_user()
    at = (await db_now(pool)) + timedelta(seconds=1.5)
    await post(admin, "bonus", user_id=user, asset_type=asset, amount=50, expires_at=at.isoformat())
    hold = await client.post(
        "/api/v1/holds",
        headers={"Idempotency-Key": new_key()},
        json={"user_id": user, "asset_type": asset, "amount": 30},
    )
    assert hold.status_code == 201, hold.text
    await wait_past(pool, at)
    shown = await asset_balance(client, user, asset)
    # 20 of the 50 can expire; the 30 the hold reserves stay until it is captured or let go.
    assert (shown["balance"], shown["held"], shown["available"], shown["granted"]) == (30, 30, 0, 30)
    run = await expire_due(pool, settings)
    assert run.expired_minor >= 20
    assert (await asset_balance(client, user, asset))["balance"] == 30
    capture = await client.post(
        f"/api/v1/holds/{hold.json()['id']}/capture", headers={"Idempotency-Key": new_key()}, json={}
    )
    assert capture.status_code == 201, capture.text
    assert draws(capture.json()) == [("granted", -30)]
    final = await asset_balance(client, user, asset)
    assert (final["balance"], final["held"], final["granted"]) == (0, 0, 0)


# --- fair to the user when credits expire --------------------------------------------------------


async def liability(admin, asset: str) -> dict[str, Any]:
    response = await admin.get("/api/v1/reports/liabilities", params={"from": "2000-01-01T00:00:00Z"})
    assert response.status_code == 200, response.text
    return next(a for a in response.json()["assets"] if a["asset_type"] == asset)


async def audit_is_clean(admin) -> None:
    """The live audit (incremental: what was posted since its last run) finds nothing wrong."""
    response = await admin.get("/api/v1/audit")
    assert response.status_code == 200, response.text
    assert response.json()["clean"] is True, response.json()["problems"]


async def reverse(http, transaction_id: str, expect: int = 201, **body: Any) -> dict[str, Any]:
    return await post(http, f"{transaction_id}/reverse", expect, **body)


async def expiring_bonus(admin, pool, user: str, asset: str, amount: int) -> tuple[dict[str, Any], datetime]:
    at = (await db_now(pool)) + timedelta(seconds=1.5)
    bonus = await post(
        admin, "bonus", user_id=user, asset_type=asset, amount=amount, expires_at=at.isoformat()
    )
    return bonus, at


async def test_a_clawback_of_a_bonus_that_expired_takes_nothing_else(
    admin, client, pool, make_user, lot_asset
):
    """The expired bonus is breakage once; a clawback of it does not take purchased credits instead,
    not even an admin's asking for a debt."""
    asset = await lot_asset()
    user = await make_user()
    await post(admin, "topup", user_id=user, asset_type=asset, amount=100)
    bonus, at = await expiring_bonus(admin, pool, user, asset, 50)
    await wait_past(pool, at)
    for body in (
        {},
        {"amount": 50},
        {"amount": 1},
        {"allow_negative": True},
        {"amount": 1, "allow_negative": True},
    ):
        refused = await reverse(admin, bonus["id"], 409, **body)
        assert refused["error"]["code"] == "amount_exceeds_clawable", (body, refused)
        assert refused["error"]["field"] == "amount"
    balance = await asset_balance(client, user, asset)
    assert (balance["balance"], balance["purchased"], balance["granted"]) == (100, 100, 0)
    report = await liability(admin, asset)
    assert (report["expired"], report["clawed_back"], report["outstanding_purchased"]) == (50, 0, 100)
    assert (await client.get(f"{TX}/{bonus['id']}")).json()["reversed_amount"] == 0


async def test_a_clawback_takes_at_most_what_is_left_of_its_credits(admin, client, make_user, lot_asset):
    asset = await lot_asset()
    user = await make_user()
    await post(admin, "topup", user_id=user, asset_type=asset, amount=100)
    bonus = await post(admin, "bonus", user_id=user, asset_type=asset, amount=60)
    spend = await post(client, "spend", user_id=user, asset_type=asset, amount=40)
    assert draws(spend) == [("granted", -40)]
    too_much = await reverse(admin, bonus["id"], 409, amount=21)
    assert too_much["error"]["code"] == "amount_exceeds_clawable"
    assert "20 of the credits" in too_much["error"]["message"]
    # Without an amount: all that is left of the bonus, and only granted credits.
    clawback = await reverse(admin, bonus["id"])
    assert clawback["amount"] == 20 and draws(clawback) == [("granted", -20)]
    balance = await asset_balance(client, user, asset)
    assert clawback["balance_after"] == balance["balance"] == 100
    assert (balance["purchased"], balance["granted"]) == (100, 0)
    # The 40 the user spent: only an admin asking for a debt takes it back, from the user's
    # other credits (and below zero for what they do not cover), as the answer's lots show.
    nothing_left = await reverse(admin, bonus["id"], 409)
    assert nothing_left["error"]["code"] == "amount_exceeds_clawable"
    debt = await reverse(admin, bonus["id"], allow_negative=True)
    assert debt["amount"] == 40 and draws(debt) == [("purchased", -40)]
    assert debt["balance_after"] == (await asset_balance(client, user, asset))["balance"] == 60


async def test_an_admin_clawback_into_debt_takes_back_the_spent_part_not_the_expired_one(
    admin, client, pool, make_user, lot_asset
):
    asset = await lot_asset()
    user = await make_user()
    await post(admin, "topup", user_id=user, asset_type=asset, amount=100)
    bonus, at = await expiring_bonus(admin, pool, user, asset, 50)
    spend = await post(client, "spend", user_id=user, asset_type=asset, amount=20)
    assert draws(spend) == [("granted", -20)]
    await wait_past(pool, at)  # the other 30 of the bonus expire
    assert (await reverse(admin, bonus["id"], 409))["error"]["code"] == "amount_exceeds_clawable"
    over = await reverse(admin, bonus["id"], 409, amount=21, allow_negative=True)
    assert over["error"]["code"] == "amount_exceeds_clawable"
    assert "30 of the credits" in over["error"]["message"]
    debt = await reverse(admin, bonus["id"], allow_negative=True)
    assert debt["amount"] == 20 and draws(debt) == [("purchased", -20)]
    balance = await asset_balance(client, user, asset)
    assert debt["balance_after"] == balance["balance"] == 80
    report = await liability(admin, asset)
    assert (report["expired"], report["clawed_back"], report["issued_granted"]) == (30, 20, 50)


@pytest.mark.parametrize("policy", [{}, {"granted_expires_in_seconds": 3600}])
async def test_a_refund_of_credits_drawn_from_a_lot_that_expired_gives_usable_credits(
    admin, client, pool, make_user, lot_asset, policy
):
    """Not back into the expired lot (the answer said 150, the balance 100, and the next expiry
    took them again): into a lot of the same origin that expires as a credit given now would."""
    asset = await lot_asset(**policy)
    user = await make_user()
    await post(admin, "topup", user_id=user, asset_type=asset, amount=100)
    bonus, at = await expiring_bonus(admin, pool, user, asset, 100)
    spend = await post(client, "spend", user_id=user, asset_type=asset, amount=70)
    assert draws(spend) == [("granted", -70)]
    await wait_past(pool, at)  # the bonus's other 30 are due (not yet posted)
    before = await db_now(pool)
    refund = await reverse(admin, spend["id"], amount=50)
    balance = await asset_balance(client, user, asset)
    assert refund["balance_after"] == balance["balance"] == 150
    assert (balance["purchased"], balance["granted"], balance["available"]) == (100, 50, 150)
    (lot,) = refund["lots"]
    assert (lot["origin"], lot["amount"]) == ("granted", 50)
    assert lot["lot_id"] != bonus["lots"][0]["lot_id"]
    if policy:
        renewed = datetime.fromisoformat(lot["expires_at"])
        assert before + timedelta(seconds=3600) <= renewed <= (await db_now(pool)) + timedelta(seconds=3600)
        assert balance["next_expiry"]["amount"] == 50
    else:
        assert lot["expires_at"] is None and balance["next_expiry"] is None
    # Usable: all of it can be spent, and none of it was counted as expired.
    spent = await post(client, "spend", user_id=user, asset_type=asset, amount=150)
    assert draws(spent)[0] == ("granted", -50)
    report = await liability(admin, asset)
    assert (report["expired"], report["refunded"], report["spent"]) == (30, 50, 220)
    assert report["outstanding_purchased"] + report["outstanding_granted"] == 0
    await audit_is_clean(admin)


async def test_a_refund_of_a_spend_that_drew_two_expired_lots_fills_one_renewed_lot(
    admin, client, pool, make_user, lot_asset
):
    asset = await lot_asset()
    user = await make_user()
    await post(admin, "topup", user_id=user, asset_type=asset, amount=10)
    await expiring_bonus(admin, pool, user, asset, 20)
    _, at = await expiring_bonus(admin, pool, user, asset, 20)
    spend = await post(client, "spend", user_id=user, asset_type=asset, amount=45)
    assert draws(spend) == [("granted", -20), ("granted", -20), ("purchased", -5)]
    await wait_past(pool, at)
    refund = await reverse(admin, spend["id"])
    assert draws(refund) == [("purchased", 5), ("granted", 40)]
    balance = await asset_balance(client, user, asset)
    assert refund["balance_after"] == balance["balance"] == 50
    assert (balance["purchased"], balance["granted"]) == (10, 40)


@pytest.mark.parametrize("credit", ["topup", "bonus", "refund", "transfer", "batch", "capture"])
async def test_every_answers_balance_after_agrees_with_the_balance_read_right_after(
    admin, client, pool, make_user, lot_asset, credit
):
    """The account holds a lot past its expiry that nothing has expired yet (a read leaves it out):
    each write expires it first, so the balance it answers is the one the read shows."""
    asset = await lot_asset()
    user = await make_user()
    await post(admin, "topup", user_id=user, asset_type=asset, amount=100)
    spend = await post(client, "spend", user_id=user, asset_type=asset, amount=10)
    hold = None
    if credit == "capture":
        hold = await client.post(
            "/api/v1/holds",
            headers={"Idempotency-Key": new_key()},
            json={"user_id": user, "asset_type": asset, "amount": 60},
        )
        assert hold.status_code == 201, hold.text
    _, at = await expiring_bonus(admin, pool, user, asset, 40)
    await wait_past(pool, at)
    assert (await asset_balance(client, user, asset))["balance"] == 90
    if credit in ("topup", "bonus"):
        answer = (await post(admin, credit, user_id=user, asset_type=asset, amount=5))["balance_after"]
    elif credit == "refund":
        answer = (await reverse(admin, spend["id"], amount=5))["balance_after"]
    elif credit == "transfer":
        payer = await make_user()
        await post(admin, "topup", user_id=payer, asset_type=asset, amount=5)
        transfer = await post(
            admin, "transfer", from_user_id=payer, to_user_id=user, asset_type=asset, amount=5
        )
        answer = transfer["counterparty_balance_after"]
    elif credit == "batch":
        operations = [{"type": "topup", "user_id": user, "asset_type": asset, "amount": 5}]
        answer = (await post(admin, "batch", operations=operations))["transactions"][0]["balance_after"]
    else:
        assert hold is not None
        captured = await client.post(
            f"/api/v1/holds/{hold.json()['id']}/capture", headers={"Idempotency-Key": new_key()}, json={}
        )
        assert captured.status_code == 201, captured.text
        answer = captured.json()["balance_after"]
    balance = await asset_balance(client, user, asset)
    assert answer == balance["balance"] == (30 if credit == "capture" else 95)


async def test_a_partial_capture_lets_the_expired_credits_it_does_not_take_go_first(
    admin, client, pool, make_user, lot_asset
):
    """The hold reserved expired credits; the capture takes part of them (not the purchased ones)
    and releases the rest, which are breakage from that instant: its answer agrees with the read
    right after."""
    asset = await lot_asset()
    user = await make_user()
    await post(admin, "topup", user_id=user, asset_type=asset, amount=20)
    _, at = await expiring_bonus(admin, pool, user, asset, 40)
    hold = await client.post(
        "/api/v1/holds",
        headers={"Idempotency-Key": new_key()},
        json={"user_id": user, "asset_type": asset, "amount": 50},
    )
    assert hold.status_code == 201, hold.text
    await wait_past(pool, at)
    shown = await asset_balance(client, user, asset)
    assert (shown["balance"], shown["held"], shown["available"]) == (50, 50, 0)  # 10 of the 40 went
    capture = await client.post(
        f"/api/v1/holds/{hold.json()['id']}/capture",
        headers={"Idempotency-Key": new_key()},
        json={"amount": 20},
    )
    assert capture.status_code == 201, capture.text
    assert draws(capture.json()) == [("granted", -20)]
    balance = await asset_balance(client, user, asset)
    assert capture.json()["balance_after"] == balance["balance"] == 20
    assert (balance["held"], balance["purchased"], balance["granted"]) == (0, 20, 0)


@pytest.mark.parametrize("credit", ["topup", "bonus", "refund", "transfer", "batch"])
async def test_a_credit_lets_a_hold_rest_on_it_and_the_expired_credits_it_reserved_go(
    admin, client, pool, make_user, lot_asset, credit
):
    """The hold reserves 30 expired credits (the read counts them, the balance is 50); a credit of
    5 replaces 5 of them, which go to breakage in the same instant: the answer and the read say 50."""
    asset = await lot_asset()
    user = await make_user()
    await post(admin, "topup", user_id=user, asset_type=asset, amount=30)
    spend = await post(client, "spend", user_id=user, asset_type=asset, amount=10)
    _, at = await expiring_bonus(admin, pool, user, asset, 40)
    hold = await client.post(
        "/api/v1/holds",
        headers={"Idempotency-Key": new_key()},
        json={"user_id": user, "asset_type": asset, "amount": 50},
    )
    assert hold.status_code == 201, hold.text
    await wait_past(pool, at)
    assert (await asset_balance(client, user, asset))["balance"] == 50
    if credit in ("topup", "bonus"):
        answer = (await post(admin, credit, user_id=user, asset_type=asset, amount=5))["balance_after"]
    elif credit == "refund":
        answer = (await reverse(admin, spend["id"], amount=5))["balance_after"]
    elif credit == "batch":  # a top-up and a transfer received, then the answer of the last
        payer = await make_user()
        await post(admin, "topup", user_id=payer, asset_type=asset, amount=3)
        operations = [
            {"type": "topup", "user_id": user, "asset_type": asset, "amount": 2},
            {"type": "transfer", "user_id": payer, "to_user_id": user, "asset_type": asset, "amount": 3},
        ]
        answer = (await post(admin, "batch", operations=operations))["transactions"][1][
            "counterparty_balance_after"
        ]
    else:
        payer = await make_user()
        await post(admin, "topup", user_id=payer, asset_type=asset, amount=5)
        transfer = await post(
            admin, "transfer", from_user_id=payer, to_user_id=user, asset_type=asset, amount=5
        )
        answer = transfer["counterparty_balance_after"]
    balance = await asset_balance(client, user, asset)
    assert answer == balance["balance"] == 50
    assert (balance["held"], balance["available"]) == (50, 0)
    history = (await client.get(f"/api/v1/wallets/{user}/transactions", params={"type": "expiry"})).json()
    assert sum(t["amount"] for t in history["data"]) == 15  # 10 before the credit, 5 for it
    await audit_is_clean(admin)
