"""The rules between the fields of a write's body (issue 19 item 3), on every route where they
apply: only a bonus expires, in one way, at most ten years ahead; a transfer names a receiver
other than its sender; only a transfer takes a receiver or a fee. Each broken rule gets a 422 in
the one error shape naming the field it is about, and nothing is written (no transaction, no
entry, no idempotency key, no hold, no balance moved). The rules are part of the body's validation, so a
request that breaks one is refused before its idempotency key is even looked at.

The routes come from the OpenAPI document: a write whose body (or a batch's operations) takes one
of the fields these rules are about must have its cases in the table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support import ledger_counts, new_key
from wallet.domain.times import ten_years_after

TX = "/api/v1/transactions"
RULE_FIELDS = {"expires_at", "expires_in_seconds", "to_user_id", "fee"}


@dataclass(frozen=True)
class Case:
    rule: str
    path: str
    body: dict[str, Any]
    code: str
    field: str
    message: str


def _cases(alice: str, bob: str) -> list[Case]:
    posting = {"user_id": alice, "asset_type": "GOLD_COINS", "amount": 1}
    transfer = {"from_user_id": alice, "to_user_id": bob, "asset_type": "GOLD_COINS", "amount": 1}
    now = datetime.now(UTC)
    soon = (now + timedelta(hours=1)).isoformat()
    too_far = (ten_years_after(now) + timedelta(days=1)).isoformat()

    def op(type: str, **fields: Any) -> dict[str, Any]:
        return {"type": type, **posting, **fields}

    def batch(operation: dict[str, Any]) -> dict[str, Any]:
        """The bad operation second, after a valid one: neither is posted."""
        return {"operations": [op("topup"), operation]}

    cases: list[Case] = []
    # Only a bonus expires.
    for type, extra in [("topup", {}), ("spend", {}), ("transfer", {"to_user_id": bob})]:
        for name, value in [("expires_in_seconds", 60), ("expires_at", soon)]:
            cases.append(
                Case(
                    "only a bonus expires",
                    f"{TX}/batch",
                    batch(op(type, **extra, **{name: value})),
                    "validation_error",
                    f"operations[1].{name}",
                    f"only a bonus expires, not a {type}",
                )
            )
    for path, body in [(f"{TX}/topup", posting), (f"{TX}/spend", posting), (f"{TX}/transfer", transfer)]:
        for name, value in [("expires_in_seconds", 60), ("expires_at", soon)]:
            cases.append(
                Case(
                    "only a bonus expires",
                    path,
                    {**body, name: value},
                    "validation_error",
                    name,
                    f"{name}: unknown field",
                )
            )
    # One way of giving it, at most ten years ahead.
    both = {"expires_in_seconds": 60, "expires_at": soon}
    for path, body, prefix in [
        (f"{TX}/bonus", {**posting, **both}, ""),
        (f"{TX}/batch", batch(op("bonus", **both)), "operations[1]."),
    ]:
        cases.append(
            Case(
                "one expiry",
                path,
                body,
                "validation_error",
                f"{prefix}expires_in_seconds",
                "give expires_at or expires_in_seconds, not both",
            )
        )
    for path, body, prefix in [
        (f"{TX}/bonus", {**posting, "expires_at": too_far}, ""),
        (f"{TX}/batch", batch(op("bonus", expires_at=too_far)), "operations[1]."),
    ]:
        cases.append(
            Case(
                "ten years",
                path,
                body,
                "validation_error",
                f"{prefix}expires_at",
                "must be at most 10 years ahead",
            )
        )
    # A hold's expiry is its own (`expires_in_seconds`, within WALLET_HOLD_EXPIRES_IN_SECONDS_MAX),
    # given in one way only.
    cases.append(
        Case(
            "one expiry",
            "/api/v1/holds",
            {**posting, "expires_in_seconds": 60, "expires_at": soon},
            "validation_error",
            "expires_at",
            "expires_at: unknown field",
        )
    )
    # A transfer names its receiver, another user.
    no_receiver = {k: v for k, v in transfer.items() if k != "to_user_id"}
    cases += [
        Case(
            "a receiver",
            f"{TX}/transfer",
            no_receiver,
            "validation_error",
            "to_user_id",
            "to_user_id: field required",
        ),
        Case(
            "a receiver",
            f"{TX}/batch",
            batch(op("transfer")),
            "validation_error",
            "operations[1].to_user_id",
            "a transfer needs to_user_id",
        ),
        Case(
            "a receiver",
            f"{TX}/batch",
            batch(op("transfer", to_user_id=None)),
            "validation_error",
            "operations[1].to_user_id",
            "a transfer needs to_user_id",
        ),
        Case(
            "two users",
            f"{TX}/transfer",
            {**transfer, "to_user_id": alice},
            "same_user",
            "to_user_id",
            "from_user_id and to_user_id must differ",
        ),
        Case(
            "two users",
            f"{TX}/batch",
            batch(op("transfer", to_user_id=alice, fee=1)),
            "same_user",
            "operations[1].to_user_id",
            "user_id and to_user_id must differ",
        ),
    ]
    # Only a transfer takes a receiver or a fee.
    for type in ("topup", "bonus", "spend"):
        for fields, named in [
            ({"to_user_id": bob}, "to_user_id"),
            ({"fee": 2}, "fee"),
            ({"to_user_id": bob, "fee": 2}, "to_user_id"),
        ]:
            cases.append(
                Case(
                    "only a transfer takes a receiver and a fee",
                    f"{TX}/batch",
                    batch(op(type, **fields)),
                    "validation_error",
                    f"operations[1].{named}",
                    f"only a transfer takes to_user_id and fee, not a {type}",
                )
            )
    for path in (f"{TX}/topup", f"{TX}/bonus", f"{TX}/spend", "/api/v1/holds"):
        for name, value in [("to_user_id", bob), ("fee", 2)]:
            cases.append(
                Case(
                    "only a transfer takes a receiver and a fee",
                    path,
                    {**posting, name: value},
                    "validation_error",
                    name,
                    f"{name}: unknown field",
                )
            )
    return cases


async def _written(pool) -> tuple[int, ...]:
    """What a write leaves: transactions, entries, idempotency keys, holds."""
    return (*await ledger_counts(pool), await pool.fetchval("SELECT count(*) FROM holds"))


def _properties(openapi: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    """The members of a body, with those of the objects in its arrays (a batch's operations)."""
    if "$ref" in schema:
        schema = openapi["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    names: set[str] = set()
    for name, member in schema.get("properties", {}).items():
        names.add(name)
        items = member.get("items")
        if isinstance(items, dict):
            names |= _properties(openapi, items)
    for choice in schema.get("anyOf", []):
        names |= _properties(openapi, choice)
    return names


async def test_every_route_whose_body_takes_a_ruled_field_is_in_the_table(admin, make_user):
    openapi = (await admin.get("/openapi.json")).json()
    ruled = {
        path
        for path, methods in openapi["paths"].items()
        for method, operation in methods.items()
        if method == "post"
        and RULE_FIELDS
        & _properties(
            openapi,
            operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {}),
        )
    }
    alice, bob = await make_user(), await make_user()
    tested = {case.path for case in _cases(alice, bob)}
    assert ruled <= tested, f"write routes with a ruled field but no case: {sorted(ruled - tested)}"


async def test_each_broken_rule_is_a_422_naming_the_field_and_writes_nothing(admin, make_user, pool):
    alice, bob = await make_user(GOLD_COINS=100), await make_user(GOLD_COINS=100)
    balances = {user: (await admin.get(f"/api/v1/wallets/{user}/balance")).json() for user in (alice, bob)}
    before = await _written(pool)
    cases = _cases(alice, bob)
    for case in cases:
        response = await admin.post(case.path, headers={"Idempotency-Key": new_key()}, json=case.body)
        assert response.status_code == 422, (case, response.text)
        assert response.json() == {
            "error": {"code": case.code, "message": case.message, "field": case.field}
        }, case
    assert {case.rule for case in cases} == {
        "only a bonus expires",
        "one expiry",
        "ten years",
        "a receiver",
        "two users",
        "only a transfer takes a receiver and a fee",
    }
    assert await _written(pool) == before
    for user, balance in balances.items():
        assert (await admin.get(f"/api/v1/wallets/{user}/balance")).json() == balance


async def test_the_rules_are_part_of_the_body_checked_before_the_idempotency_key(admin, make_user, pool):
    """Sent without any idempotency key, a body that breaks a rule gets the rule's refusal, not
    `idempotency_key_missing`: the body is validated as a whole first (wallet.api.write)."""
    alice, bob = await make_user(GOLD_COINS=10), await make_user()
    before = await _written(pool)
    for case in _cases(alice, bob):
        response = await admin.post(case.path, json=case.body)
        assert (response.status_code, response.json()["error"]["field"]) == (422, case.field), case
    assert await _written(pool) == before


async def test_what_the_rules_allow_is_posted(admin, make_user):
    """The edges the rules let through: a fee of 0 on a top-up (no fee), an expiry ten years ahead
    less a minute, one way of giving a bonus's expiry, and a transfer between two users."""
    alice, bob = await make_user(GOLD_COINS=10), await make_user()
    almost_ten_years = (ten_years_after(datetime.now(UTC)) - timedelta(minutes=1)).isoformat()
    posting = {"user_id": alice, "asset_type": "GOLD_COINS", "amount": 1}
    operations = [
        {"type": "topup", **posting, "fee": 0},
        {"type": "bonus", **posting, "expires_at": almost_ten_years},
        {"type": "bonus", **posting, "expires_in_seconds": 60},
        {"type": "transfer", **posting, "to_user_id": bob, "fee": 1},
    ]
    batch = await admin.post(
        f"{TX}/batch", headers={"Idempotency-Key": new_key()}, json={"operations": operations}
    )
    assert batch.status_code == 201, batch.text
    assert [t["type"] for t in batch.json()["transactions"]] == ["topup", "bonus", "bonus", "transfer"]
    bonus = await admin.post(
        f"{TX}/bonus",
        headers={"Idempotency-Key": new_key()},
        json={**posting, "expires_at": almost_ten_years},
    )
    assert bonus.status_code == 201, bonus.text
