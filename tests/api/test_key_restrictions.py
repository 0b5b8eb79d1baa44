"""Least privilege: a key restricted to some operations, asset types and a maximum amount is
refused (403, with a code naming the restriction) whatever the route, batch operations included,
and a refusal writes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support import bearer, ledger_counts, new_key
from wallet.domain.rules import KeyOperation
from wallet.services.api_keys import KeyRestrictions, create_api_key


@pytest.fixture
async def restricted(app: Any, pool: asyncpg.Pool) -> Callable[..., Awaitable[httpx.AsyncClient]]:
    """A client whose key has the given scopes and restrictions."""
    opened: list[httpx.AsyncClient] = []

    async def make(
        scopes: list[str],
        *,
        assets: set[str] | None = None,
        operations: set[str] | None = None,
        max_amount: int | None = None,
    ) -> httpx.AsyncClient:
        restrictions = KeyRestrictions(
            asset_codes=frozenset(assets) if assets else None,
            operations=frozenset(KeyOperation(o) for o in operations) if operations else None,
            max_amount_minor=max_amount,
        )
        async with pool.acquire() as conn:
            token = await create_api_key(conn, "restricted", scopes, restrictions=restrictions)
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://wallet.test", headers=bearer(token)
        )
        opened.append(http)
        return http

    yield make  # type: ignore[misc]
    for http in opened:
        await http.aclose()


@pytest.fixture
async def loyalty(
    restricted: Callable[..., Awaitable[httpx.AsyncClient]],
) -> AsyncIterator[httpx.AsyncClient]:
    """The issue's example: a loyalty service that may only grant LOYALTY_POINTS bonuses up to 1,000."""
    return await restricted(["credit"], assets={"LOYALTY_POINTS"}, operations={"bonus"}, max_amount=1000)


def _posting(user_id: str, asset: str, amount: int) -> dict[str, Any]:
    return {"user_id": user_id, "asset_type": asset, "amount": amount}


async def _refused(response: httpx.Response, code: str, field: str | None) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["field"] == field


async def test_loyalty_key_grants_loyalty_bonuses_up_to_its_maximum(loyalty, make_user, pool):
    user = await make_user()
    ok = await loyalty.post(
        "/api/v1/transactions/bonus",
        json=_posting(user, "LOYALTY_POINTS", 1000),
        headers={"Idempotency-Key": new_key()},
    )
    assert ok.status_code == 201, ok.text

    before = await ledger_counts(pool)
    cases = [
        ("bonus", _posting(user, "LOYALTY_POINTS", 1001), "key_amount_over_limit", "amount"),
        ("bonus", _posting(user, "GOLD_COINS", 1), "key_asset_not_allowed", "asset_type"),
        ("bonus", _posting(user, "DIAMONDS", 1001), "key_asset_not_allowed", "asset_type"),
        ("topup", _posting(user, "LOYALTY_POINTS", 1), "key_operation_not_allowed", None),
    ]
    for route, body, code, field in cases:
        response = await loyalty.post(
            f"/api/v1/transactions/{route}", json=body, headers={"Idempotency-Key": new_key()}
        )
        await _refused(response, code, field)
    assert await ledger_counts(pool) == before  # no transaction, entry or idempotency record


async def test_scopes_still_come_first(loyalty, make_user):
    # The key has no spend scope: the scope's 403 (forbidden), not a restriction's.
    user = await make_user()
    response = await loyalty.post(
        "/api/v1/transactions/spend",
        json=_posting(user, "LOYALTY_POINTS", 1),
        headers={"Idempotency-Key": new_key()},
    )
    await _refused(response, "forbidden", None)


async def test_a_batch_is_checked_operation_by_operation_and_refused_whole(loyalty, make_user, pool):
    user = await make_user()
    before = await ledger_counts(pool)
    for operations, code, field in [
        (
            [
                {"type": "bonus", **_posting(user, "LOYALTY_POINTS", 10)},
                {"type": "bonus", **_posting(user, "GOLD_COINS", 10)},
            ],
            "key_asset_not_allowed",
            "operations[1].asset_type",
        ),
        (
            [
                {"type": "bonus", **_posting(user, "LOYALTY_POINTS", 10)},
                {"type": "bonus", **_posting(user, "LOYALTY_POINTS", 5000)},
            ],
            "key_amount_over_limit",
            "operations[1].amount",
        ),
        (
            # topup needs the credit scope, which the key has; its restriction refuses it
            [{"type": "topup", **_posting(user, "LOYALTY_POINTS", 10)}],
            "key_operation_not_allowed",
            "operations[0].type",
        ),
    ]:
        response = await loyalty.post(
            "/api/v1/transactions/batch",
            json={"operations": operations},
            headers={"Idempotency-Key": new_key()},
        )
        await _refused(response, code, field)
    assert await ledger_counts(pool) == before

    allowed = await loyalty.post(
        "/api/v1/transactions/batch",
        json={"operations": [{"type": "bonus", **_posting(user, "LOYALTY_POINTS", 10)}] * 2},
        headers={"Idempotency-Key": new_key()},
    )
    assert allowed.status_code == 201, allowed.text


async def test_holds_capture_and_void_are_checked_against_the_hold(restricted, admin, make_user):
    user = await make_user(DIAMONDS=500, GOLD_COINS=500)
    holder = await restricted(["spend"], assets={"DIAMONDS"}, operations={"hold", "capture"}, max_amount=50)

    async def place(http: httpx.AsyncClient, asset: str, amount: int) -> httpx.Response:
        return await http.post(
            "/api/v1/holds", json=_posting(user, asset, amount), headers={"Idempotency-Key": new_key()}
        )

    await _refused(await place(holder, "GOLD_COINS", 10), "key_asset_not_allowed", "asset_type")
    await _refused(await place(holder, "DIAMONDS", 51), "key_amount_over_limit", "amount")
    own = await place(holder, "DIAMONDS", 50)
    assert own.status_code == 201, own.text

    # Holds placed by an unrestricted key: their asset and amount count.
    gold = (await place(admin, "GOLD_COINS", 10)).json()["id"]
    big = (await place(admin, "DIAMONDS", 80)).json()["id"]

    async def capture(hold_id: str, body: dict[str, Any]) -> httpx.Response:
        return await holder.post(
            f"/api/v1/holds/{hold_id}/capture", json=body, headers={"Idempotency-Key": new_key()}
        )

    await _refused(await capture(gold, {}), "key_asset_not_allowed", "asset_type")
    await _refused(await capture(big, {}), "key_amount_over_limit", "amount")  # the whole hold: 80
    await _refused(await capture(big, {"amount": 60}), "key_amount_over_limit", "amount")
    partial = await capture(big, {"amount": 40})
    assert partial.status_code == 201, partial.text
    void = await holder.post(f"/api/v1/holds/{own.json()['id']}/void", headers={"Idempotency-Key": new_key()})
    await _refused(void, "key_operation_not_allowed", None)
    # An unknown hold is still a 404, not a restriction.
    missing = await capture("00000000-0000-0000-0000-000000000000", {})
    assert missing.status_code == 404


async def test_reversals_are_checked_against_the_original(restricted, admin, make_user):
    user = await make_user(GOLD_COINS=1000, DIAMONDS=100)
    refunder = await restricted(["reverse", "read"], assets={"GOLD_COINS"}, max_amount=100)

    async def spend(asset: str, amount: int) -> str:
        response = await admin.post(
            "/api/v1/transactions/spend",
            json=_posting(user, asset, amount),
            headers={"Idempotency-Key": new_key()},
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def reverse(transaction_id: str, body: dict[str, Any]) -> httpx.Response:
        return await refunder.post(
            f"/api/v1/transactions/{transaction_id}/reverse",
            json=body,
            headers={"Idempotency-Key": new_key()},
        )

    gold = await spend("GOLD_COINS", 500)
    diamonds = await spend("DIAMONDS", 10)
    await _refused(await reverse(gold, {}), "key_amount_over_limit", "amount")  # all that is left: 500
    await _refused(await reverse(diamonds, {"amount": 1}), "key_asset_not_allowed", "asset_type")
    assert (await reverse(gold, {"amount": 100})).status_code == 201
    small = await spend("GOLD_COINS", 80)
    assert (await reverse(small, {})).status_code == 201  # the whole 80 is within the maximum


async def test_transfers_are_checked(restricted, make_user):
    sender, receiver = await make_user(GOLD_COINS=100, DIAMONDS=100), await make_user()
    mover = await restricted(["transfer"], assets={"GOLD_COINS"}, operations={"transfer"}, max_amount=20)

    async def transfer(asset: str, amount: int) -> httpx.Response:
        return await mover.post(
            "/api/v1/transactions/transfer",
            json={"from_user_id": sender, "to_user_id": receiver, "asset_type": asset, "amount": amount},
            headers={"Idempotency-Key": new_key()},
        )

    await _refused(await transfer("DIAMONDS", 1), "key_asset_not_allowed", "asset_type")
    await _refused(await transfer("GOLD_COINS", 21), "key_amount_over_limit", "amount")
    assert (await transfer("GOLD_COINS", 20)).status_code == 201


async def test_restrictions_are_validated_and_enforced_by_the_database(pool):
    from wallet.domain.errors import WalletError

    async with pool.acquire() as conn:
        with pytest.raises(WalletError, match="unknown asset type"):
            await create_api_key(
                conn, "x", ["credit"], restrictions=KeyRestrictions(asset_codes=frozenset({"RUBIES"}))
            )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO api_keys (name, key_prefix, key_sha256, scopes, allowed_operations)"
                " VALUES ('x', 'wk_x', sha256('x'), '{read}', '{launder}')"
            )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO api_keys (name, key_prefix, key_sha256, scopes, max_amount_minor)"
                " VALUES ('x', 'wk_x', sha256('y'), '{read}', 0)"
            )


# Issue 17 (3): a key's maximum bounds everything one operation moves, not only its `amount`.
MAX = 100
EVERY_SCOPE = ["credit", "spend", "transfer", "reverse", "read"]


def _transfer(sender: str, receiver: str, amount: int, fee: int) -> dict[str, Any]:
    return {
        "from_user_id": sender,
        "to_user_id": receiver,
        "asset_type": "GOLD_COINS",
        "amount": amount,
        "fee": fee,
    }


def _batch_transfer(sender: str, receiver: str, amount: int, fee: int) -> dict[str, Any]:
    return {"type": "transfer", "to_user_id": receiver, "fee": fee, **_posting(sender, "GOLD_COINS", amount)}


async def _write(http: httpx.AsyncClient, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return await http.post(path, json=body or {}, headers={"Idempotency-Key": new_key()})


async def _balances(admin: httpx.AsyncClient, *users: str) -> list[int]:
    amounts = []
    for user in users:
        response = await admin.get(f"/api/v1/wallets/{user}/balance", params={"asset_type": "GOLD_COINS"})
        assert response.status_code == 200, response.text
        amounts.append(response.json()["balances"][0]["balance"])
    return amounts


async def test_a_transfer_fee_counts_toward_the_maximum_single_and_batched(
    restricted, admin, make_user, pool
):
    sender, receiver = await make_user(GOLD_COINS=200_000), await make_user()
    mover = await restricted(["transfer", "spend", "credit"], max_amount=MAX)
    before, balances = await ledger_counts(pool), await _balances(admin, sender, receiver)
    refusals = [
        # The case: 100 within the maximum, and 90,000 more as the fee.
        ("/api/v1/transactions/transfer", _transfer(sender, receiver, 100, 90_000), "fee"),
        ("/api/v1/transactions/transfer", _transfer(sender, receiver, 1, 100), "fee"),
        ("/api/v1/transactions/transfer", _transfer(sender, receiver, 101, 0), "amount"),
        ("/api/v1/transactions/transfer", _transfer(sender, receiver, 101, 5), "amount"),
    ]
    for batched in [
        [_batch_transfer(sender, receiver, 100, 90_000)],
        [_batch_transfer(sender, receiver, 10, 10), _batch_transfer(sender, receiver, 50, 51)],
        [{"type": "spend", **_posting(sender, "GOLD_COINS", 10)}, _batch_transfer(sender, receiver, 99, 2)],
    ]:
        field = f"operations[{len(batched) - 1}].fee"
        refusals.append(("/api/v1/transactions/batch", {"operations": batched}, field))
    for path, body, field in refusals:
        response = await _write(mover, path, body)
        await _refused(response, "key_amount_over_limit", field)
        message = response.json()["error"]["message"]
        assert "maximum of 100" in message, message
    assert await ledger_counts(pool) == before  # nothing written, not even an idempotency record
    assert await _balances(admin, sender, receiver) == balances

    # Exactly the maximum, amount and fee together, goes through, single and batched.
    assert (
        await _write(mover, "/api/v1/transactions/transfer", _transfer(sender, receiver, 60, 40))
    ).status_code == 201
    batch = {
        "operations": [_batch_transfer(sender, receiver, 90, 10), _batch_transfer(sender, receiver, 100, 0)]
    }
    assert (await _write(mover, "/api/v1/transactions/batch", batch)).status_code == 201
    assert await _balances(admin, sender, receiver) == [balances[0] - 300, balances[1] + 250]


async def test_every_operation_is_bounded_by_the_maximum(restricted, admin, make_user, pool):
    """Each operation that moves credits, single and in a batch, at the maximum and one over."""
    user, other = await make_user(GOLD_COINS=10_000), await make_user()
    key = await restricted(EVERY_SCOPE, max_amount=MAX)

    async def by_admin(path: str, body: dict[str, Any] | None = None) -> str:
        response = await _write(admin, path, body)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    big_hold = await by_admin("/api/v1/holds", _posting(user, "GOLD_COINS", MAX + 1))
    big_spend = await by_admin("/api/v1/transactions/spend", _posting(user, "GOLD_COINS", MAX + 1))
    over: list[tuple[str, dict[str, Any], str]] = [
        (f"/api/v1/transactions/{kind}", _posting(user, "GOLD_COINS", MAX + 1), "amount")
        for kind in ("topup", "bonus", "spend")
    ]
    over += [
        ("/api/v1/transactions/transfer", _transfer(user, other, MAX, 1), "fee"),
        ("/api/v1/holds", _posting(user, "GOLD_COINS", MAX + 1), "amount"),
        (f"/api/v1/holds/{big_hold}/capture", {}, "amount"),  # the whole hold
        (f"/api/v1/holds/{big_hold}/capture", {"amount": MAX + 1}, "amount"),
        (f"/api/v1/transactions/{big_spend}/reverse", {}, "amount"),  # all that is left of it
        (f"/api/v1/transactions/{big_spend}/reverse", {"amount": MAX + 1}, "amount"),
    ]
    for kind in ("topup", "bonus", "spend"):
        ops = [
            {"type": kind, **_posting(user, "GOLD_COINS", 1)},
            {"type": kind, **_posting(user, "GOLD_COINS", MAX + 1)},
        ]
        over.append(("/api/v1/transactions/batch", {"operations": ops}, "operations[1].amount"))
    over.append(
        (
            "/api/v1/transactions/batch",
            {"operations": [_batch_transfer(user, other, MAX + 1, 0)]},
            "operations[0].amount",
        )
    )
    over.append(
        (
            "/api/v1/transactions/batch",
            {"operations": [_batch_transfer(user, other, MAX, 1)]},
            "operations[0].fee",
        )
    )
    before, balances = await ledger_counts(pool), await _balances(admin, user, other)
    for path, body, field in over:
        await _refused(await _write(key, path, body), "key_amount_over_limit", field)
    assert await ledger_counts(pool) == before
    assert await _balances(admin, user, other) == balances

    at_max = [
        *[
            (f"/api/v1/transactions/{kind}", _posting(user, "GOLD_COINS", MAX))
            for kind in ("topup", "bonus", "spend")
        ],
        ("/api/v1/transactions/transfer", _transfer(user, other, MAX - 1, 1)),
        ("/api/v1/transactions/batch", {"operations": [_batch_transfer(user, other, MAX - 1, 1)] * 2}),
        (
            "/api/v1/transactions/batch",
            {"operations": [{"type": "spend", **_posting(user, "GOLD_COINS", MAX)}] * 2},
        ),
        ("/api/v1/holds", _posting(user, "GOLD_COINS", MAX)),
        (f"/api/v1/holds/{big_hold}/capture", {"amount": MAX}),
        (f"/api/v1/transactions/{big_spend}/reverse", {"amount": MAX}),
    ]
    for path, body in at_max:
        response = await _write(key, path, body)
        assert response.status_code == 201, (path, response.text)
