"""Every method of `WalletClient` and `AsyncWalletClient` once against the real service, with
exact amounts, and the typed errors with their catalogue codes (each raised after exactly one
request: 4xx are never retried)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest

from tests.client.conftest import Api, ApiFactory, balance_in_db, ensure_user, transactions_with_key
from wallet_client import (
    BatchOperation,
    Conflict,
    Forbidden,
    Health,
    IdempotencyKeyReused,
    InsufficientFunds,
    NotFound,
    Unauthorized,
    ValidationFailed,
    WalletAPIError,
)


async def test_every_method_against_the_service(api: Api, db, new_user_id):
    assert await api("health") == Health("ok", "ok")
    assert {"GOLD_COINS", "DIAMONDS", "LOYALTY_POINTS"} <= {a.code for a in await api("list_asset_types")}

    # Users
    alice, bob = new_user_id(), new_user_id()
    created = await api("create_user", alice, "Alice")
    assert (created.user_id, created.name, created.created) == (alice, "Alice", True)
    assert isinstance(created.created_at, datetime) and created.created_at.tzinfo is not None
    again = await api("create_user", alice, "Alice")
    assert again.created is False and again == created
    await api("create_user", bob, "Bob")
    first_page = await api("list_users", limit=1)
    assert len(first_page.data) == 1 and first_page.next_cursor is not None
    assert {alice, bob} <= {u.user_id for u in await api.collect("iter_users", page_size=2)}

    # Top-up, its replay, bonus, spend
    top = await api(
        "topup", alice, "GOLD_COINS", 1000, description="Gold pack", metadata={"order_id": "8812"}
    )
    assert (top.type, top.status, top.user_id, top.asset_type) == ("topup", "posted", alice, "GOLD_COINS")
    assert (top.amount, top.balance_after, top.replayed) == (1000, 1000, False)
    assert (top.description, top.metadata) == ("Gold pack", {"order_id": "8812"})
    assert sorted((e.account, e.amount) for e in top.entries) == [("SYSTEM_TREASURY", -1000), (alice, 1000)]
    replay = await api(
        "topup",
        alice,
        "GOLD_COINS",
        1000,
        description="Gold pack",
        metadata={"order_id": "8812"},
        idempotency_key=top.idempotency_key,
    )
    assert replay.replayed is True and replay == top
    bonus = await api("bonus", alice, "DIAMONDS", 40)
    assert (bonus.type, bonus.amount, bonus.balance_after) == ("bonus", 40, 40)
    spend = await api("spend", alice, "GOLD_COINS", 300, idempotency_key=f"buy-{uuid.uuid4()}")
    assert (spend.type, spend.amount, spend.balance_after) == ("spend", 300, 700)
    assert await api("get_transaction", spend.id) == spend

    # Balances now and as of an instant
    balances = await api("get_balances", alice)
    assert balances.user_id == alice and balances.as_of is None
    gold = balances["GOLD_COINS"]
    assert (gold.balance, gold.held, gold.available, gold.debt) == (700, 0, 700, 0)
    assert (gold.purchased, gold.granted, gold.next_expiry) == (700, 0, None)
    assert balances["DIAMONDS"].balance == 40 and "LOYALTY_POINTS" in balances
    assert [(m.origin, m.amount) for m in spend.lots] == [("purchased", -300)]

    # A bonus that expires (for a user of its own): its lot, and the balance's next expiry
    carol = new_user_id()
    await api("create_user", carol, "Carol")
    expiring = await api("bonus", carol, "LOYALTY_POINTS", 5, expires_in_seconds=3600)
    (lot,) = expiring.lots
    assert (lot.origin, lot.amount) == ("granted", 5) and lot.expires_at is not None
    until = (lot.expires_at + timedelta(hours=1)).replace(microsecond=0)
    dated = await api("bonus", carol, "LOYALTY_POINTS", 2, expires_at=until)
    assert dated.lots[0].expires_at == until
    points = (await api("get_balances", carol, asset_type="LOYALTY_POINTS"))["LOYALTY_POINTS"]
    assert (points.balance, points.granted, points.purchased) == (7, 7, 0)
    assert points.next_expiry is not None
    assert (points.next_expiry.amount, points.next_expiry.at) == (5, lot.expires_at)
    before = await api(
        "get_balances", alice, asset_type="GOLD_COINS", as_of=spend.created_at - timedelta(microseconds=1)
    )
    assert [b.asset_type for b in before.balances] == ["GOLD_COINS"]
    assert before["GOLD_COINS"].balance == 1000 and before.as_of is not None

    # Transfer with a fee, a batch (a trade and more), a partial refund
    transfer = await api("transfer", alice, bob, "GOLD_COINS", 200, fee=5, description="gift")
    assert (transfer.type, transfer.amount, transfer.fee, transfer.balance_after) == ("transfer", 200, 5, 495)
    assert (transfer.counterparty_user_id, transfer.counterparty_balance_after) == (bob, 200)
    batch = await api(
        "batch",
        [
            BatchOperation.topup(bob, "DIAMONDS", 10),
            BatchOperation.transfer(bob, alice, "DIAMONDS", 10),
            BatchOperation.spend(alice, "GOLD_COINS", 95, metadata={"item": "sword"}),
            BatchOperation.bonus(bob, "LOYALTY_POINTS", 7, description="streak"),
        ],
    )
    assert batch.replayed is False
    assert [(t.type, t.user_id, t.amount, t.balance_after) for t in batch.transactions] == [
        ("topup", bob, 10, 10),
        ("transfer", bob, 10, 0),
        ("spend", alice, 95, 400),
        ("bonus", bob, 7, 7),
    ]
    assert batch.transactions[1].counterparty_balance_after == 50
    refund = await api("reverse", spend.id, amount=100, reason="not delivered")
    assert (refund.type, refund.amount, refund.reverses, refund.balance_after) == (
        "refund",
        100,
        spend.id,
        500,
    )
    assert (await api("get_transaction", spend.id)).reversed_amount == 100

    # Holds: place, get, list, capture part; place and void another
    hold = await api("place_hold", alice, "GOLD_COINS", 150, expires_in_seconds=600, description="auction")
    assert (hold.status, hold.amount, hold.captured_amount, hold.replayed) == ("open", 150, None, False)
    assert abs((hold.expires_at - hold.created_at) - timedelta(seconds=600)) < timedelta(seconds=1)
    held = (await api("get_balances", alice))["GOLD_COINS"]
    assert (held.balance, held.held, held.available) == (500, 150, 350)
    assert await api("get_hold", hold.id) == hold
    assert [h.id for h in (await api("list_holds", alice)).data] == [hold.id]
    capture = await api("capture_hold", hold.id, amount=120)
    assert (capture.type, capture.amount, capture.hold_id, capture.balance_after) == (
        "capture",
        120,
        hold.id,
        380,
    )
    second = await api("place_hold", alice, "GOLD_COINS", 50)
    voided = await api("void_hold", second.id)
    assert (voided.id, voided.status, voided.closed_at is not None) == (second.id, "voided", True)
    all_holds = await api.collect("iter_holds", alice, status="all", page_size=1)
    assert [(h.id, h.status, h.captured_amount) for h in all_holds] == [
        (second.id, "voided", None),
        (hold.id, "captured", 120),
    ]
    assert (await api("list_holds", alice)).data == ()

    # History: pages, every page, a filter, a time window
    expected = [capture, refund, batch.transactions[2], batch.transactions[1], transfer, spend, bonus, top]
    page = await api("get_history", alice, limit=3)
    assert [t.id for t in page.data] == [t.id for t in expected[:3]] and page.next_cursor is not None
    page2 = await api("get_history", alice, limit=3, cursor=page.next_cursor)
    assert [t.id for t in page2.data] == [t.id for t in expected[3:6]]
    everything = await api.collect("iter_history", alice, page_size=3)
    assert [t.id for t in everything] == [t.id for t in expected]
    assert everything[-1] == top
    spends = await api.collect("iter_history", alice, type="spend", asset_type="GOLD_COINS")
    assert [t.id for t in spends] == [batch.transactions[2].id, spend.id]
    window = await api("get_history", alice, from_time=spend.created_at, to_time=transfer.created_at)
    assert [t.id for t in window.data] == [spend.id]

    # The ledger agrees
    final = await api("get_balances", alice)
    assert (final["GOLD_COINS"].balance, final["GOLD_COINS"].held, final["DIAMONDS"].balance) == (380, 0, 50)
    assert await balance_in_db(db, alice) == 380
    assert len(await transactions_with_key(db, top.idempotency_key)) == 1


async def test_errors_are_typed_with_their_code_and_never_retried(api_factory: ApiFactory, db, new_user_id):
    api = api_factory()
    user = new_user_id()
    await ensure_user(db, user)
    await api("topup", user, "GOLD_COINS", 10)
    calls = 1

    async def refused(exc_type, method, *args, **kwargs):
        nonlocal calls
        with pytest.raises(exc_type) as info:
            await api(method, *args, **kwargs)
        calls += 1
        assert api.transport.count == calls, api.transport.outcomes  # one attempt, no retry
        return info.value

    err = await refused(InsufficientFunds, "spend", user, "GOLD_COINS", 11)
    assert isinstance(err, Conflict) and isinstance(err, WalletAPIError)
    assert (err.status, err.code, err.field) == (409, "insufficient_funds", "amount")
    assert "less than 11" in err.message and err.idempotency_key == api.transport.keys()[-1]
    err = await refused(NotFound, "topup", "c_nobody_" + uuid.uuid4().hex[:8], "GOLD_COINS", 5)
    assert (err.status, err.code, err.field) == (404, "user_not_found", "user_id")
    err = await refused(NotFound, "get_transaction", str(uuid.uuid4()))
    assert err.code == "transaction_not_found"
    err = await refused(NotFound, "get_hold", str(uuid.uuid4()))
    assert err.code == "hold_not_found"
    err = await refused(NotFound, "get_balances", user, asset_type="NO_SUCH_ASSET")
    assert err.code == "asset_type_not_found"
    err = await refused(ValidationFailed, "topup", user, "GOLD_COINS", 0)
    assert (err.status, err.code, err.field) == (422, "validation_error", "amount")
    err = await refused(ValidationFailed, "transfer", user, user, "GOLD_COINS", 1)
    assert (err.code, err.field) == ("same_user", "to_user_id")
    key = f"reused-{uuid.uuid4()}"
    await api("topup", user, "GOLD_COINS", 1, idempotency_key=key)
    calls += 1
    err = await refused(IdempotencyKeyReused, "topup", user, "GOLD_COINS", 2, idempotency_key=key)
    assert (err.status, err.code, err.idempotency_key) == (422, "idempotency_key_reused", key)
    # A stored refusal replays as the same typed error, marked as a replay.
    key = f"short-{uuid.uuid4()}"
    first = await refused(InsufficientFunds, "spend", user, "GOLD_COINS", 1000, idempotency_key=key)
    again = await refused(InsufficientFunds, "spend", user, "GOLD_COINS", 1000, idempotency_key=key)
    assert (first.replayed, again.replayed, again.message) == (False, True, first.message)

    # Client-side refusals: nothing is sent.
    with pytest.raises(TypeError):
        await api("topup", user, "GOLD_COINS", 1.5)
    with pytest.raises(ValueError, match="aware"):
        await api("get_balances", user, as_of=datetime(2026, 1, 1))
    assert api.transport.count == calls
    assert await balance_in_db(db, user) == 11

    reader = api_factory("read")
    with pytest.raises(Forbidden) as forbidden:
        await reader("spend", user, "GOLD_COINS", 1)
    assert (forbidden.value.status, forbidden.value.code) == (403, "forbidden")
    assert (await reader("get_balances", user))["GOLD_COINS"].balance == 11
    assert reader.transport.count == 2
    stranger = api_factory("wk_not_a_real_key")
    with pytest.raises(Unauthorized) as unauthorized:
        await stranger("get_balances", user)
    assert (unauthorized.value.status, unauthorized.value.code) == (401, "unauthenticated")
    assert stranger.transport.count == 1
