"""Every route's JSON answer lists its keys in the one documented order (README, "Key order"):
identity first, then amounts, then `type` and `status`, then the rest alphabetically; the value of
`metadata` is the caller's and is left as stored. The same on write, replay, GET and history, and
a replay is the first answer byte for byte."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.support import new_key
from wallet.domain.documents import AMOUNTS, FIRST_OF_THE_REST, IDENTITY

# The README's order, written out here rather than taken from the code that applies it.
README_IDENTITY = [
    "id",
    "code",
    "user_id",
    "asset_type",
    "name",
    "account_id",
    "account",
    "lot_id",
    "event_id",
]
README_AMOUNTS = [
    "amount", "balance", "held", "available", "debt", "purchased", "granted", "balance_after", "fee",
    "reversed_amount", "captured_amount", "counterparty_balance_after",
]  # fmt: skip

TRANSACTION_KEYS = [
    "id", "user_id", "asset_type", "amount", "balance_after", "fee", "reversed_amount",
    "counterparty_balance_after", "type", "status", "counterparty_user_id", "created_at", "description",
    "entries", "hold_id", "idempotency_key", "lots", "metadata", "reverses",
]  # fmt: skip
BALANCE_KEYS = [
    "asset_type", "name", "balance", "held", "available", "debt", "purchased", "granted", "next_expiry", "scale",
]  # fmt: skip
HOLD_KEYS = [
    "id", "user_id", "asset_type", "amount", "captured_amount", "status", "capture_transaction_id",
    "closed_at", "created_at", "description", "expires_at", "idempotency_key", "metadata",
]  # fmt: skip


def _rank(key: str) -> tuple[int, int | str]:
    for group, keys in enumerate((README_IDENTITY, README_AMOUNTS, ["type", "status"])):
        if key in keys:
            return (group, keys.index(key))
    return (3, key)


def _pairs(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return pairs


def _check(value: Any, where: str, problems: list[str]) -> None:
    """Every object's keys (outside metadata) in the documented order."""
    if isinstance(value, list) and all(isinstance(p, tuple) and len(p) == 2 for p in value) and value:
        keys = [k for k, _ in value]
        if keys != sorted(keys, key=_rank):
            problems.append(f"{where}: {keys}")
        for key, item in value:
            if key != "metadata":
                _check(item, f"{where}.{key}", problems)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, f"{where}[{index}]", problems)


def _keys(body: bytes) -> list[str]:
    return [k for k, _ in json.loads(body, object_pairs_hook=_pairs)]


def test_the_documented_order_is_the_one_applied():
    assert list(IDENTITY) == README_IDENTITY
    assert list(AMOUNTS) == README_AMOUNTS
    assert list(FIRST_OF_THE_REST) == ["type", "status"]


async def test_every_route_answers_in_the_documented_key_order(app, admin, pool, make_user):
    alice, bob = await make_user(GOLD_COINS=1000, DIAMONDS=50), await make_user()
    answers: dict[tuple[str, str], list[httpx.Response]] = {}

    async def call(method: str, template: str, path: str, *, replay: bool = False, **kwargs: Any) -> Any:
        headers = {"Idempotency-Key": new_key()} if method == "POST" else {}
        response = await admin.request(method, path, headers=headers, **kwargs)
        assert response.status_code < 300, (path, response.text)
        answers.setdefault((method, template), []).append(response)
        if replay:  # the same write again: the first answer's bytes, exactly
            again = await admin.request(method, path, headers=headers, **kwargs)
            assert again.headers["Idempotent-Replayed"] == "true", path
            assert again.content == response.content, path
            answers[(method, template)].append(again)
        return response.json() if response.content else None

    metadata = {"zeta": 1, "a": {"y": 2, "b": 1.10}}
    posting = {"user_id": alice, "asset_type": "GOLD_COINS", "amount": 10, "metadata": metadata}
    topup = await call(
        "POST", "/api/v1/transactions/topup", "/api/v1/transactions/topup", json=posting, replay=True
    )
    await call("POST", "/api/v1/transactions/bonus", "/api/v1/transactions/bonus", json=posting, replay=True)
    spend = await call(
        "POST", "/api/v1/transactions/spend", "/api/v1/transactions/spend", json=posting, replay=True
    )
    operations = [
        {"type": "transfer", "user_id": alice, "to_user_id": bob, "asset_type": "GOLD_COINS", "amount": 3},
        {"type": "bonus", "user_id": bob, "asset_type": "DIAMONDS", "amount": 2},
    ]
    await call("POST", "/api/v1/transactions/batch", "/api/v1/transactions/batch",
               json={"operations": operations}, replay=True)  # fmt: skip
    transfer = {"from_user_id": alice, "to_user_id": bob, "asset_type": "GOLD_COINS", "amount": 5, "fee": 1}
    await call(
        "POST", "/api/v1/transactions/transfer", "/api/v1/transactions/transfer", json=transfer, replay=True
    )
    await call("POST", "/api/v1/transactions/{transaction_id}/reverse",
               f"/api/v1/transactions/{spend['id']}/reverse", json={"amount": 4}, replay=True)  # fmt: skip
    got = await call("GET", "/api/v1/transactions/{transaction_id}", f"/api/v1/transactions/{topup['id']}")
    assert got == topup and list(got) == TRANSACTION_KEYS
    hold_body = {"user_id": alice, "asset_type": "GOLD_COINS", "amount": 20, "metadata": metadata}
    hold = await call("POST", "/api/v1/holds", "/api/v1/holds", json=hold_body, replay=True)
    assert list(hold) == HOLD_KEYS
    await call("POST", "/api/v1/holds/{hold_id}/capture", f"/api/v1/holds/{hold['id']}/capture",
               json={"amount": 5}, replay=True)  # fmt: skip
    other = await call("POST", "/api/v1/holds", "/api/v1/holds", json=hold_body)
    await call("POST", "/api/v1/holds/{hold_id}/void", f"/api/v1/holds/{other['id']}/void", replay=True)
    await call("GET", "/api/v1/holds/{hold_id}", f"/api/v1/holds/{hold['id']}")
    await call("GET", "/api/v1/wallets/{user_id}/holds", f"/api/v1/wallets/{alice}/holds?status=all")
    balance = await call("GET", "/api/v1/wallets/{user_id}/balance", f"/api/v1/wallets/{alice}/balance")
    assert list(balance) == ["user_id", "as_of", "balances"]
    assert list(balance["balances"][0]) == BALANCE_KEYS
    await call("GET", "/api/v1/wallets/{user_id}/balance",
               f"/api/v1/wallets/{alice}/balance?as_of=2100-01-01T00:00:00Z")  # fmt: skip
    history = await call(
        "GET", "/api/v1/wallets/{user_id}/transactions", f"/api/v1/wallets/{alice}/transactions"
    )
    assert next(t for t in history["data"] if t["id"] == topup["id"]) == topup
    await call("GET", "/api/v1/reports/liabilities", "/api/v1/reports/liabilities")
    await call("GET", "/api/v1/users", "/api/v1/users?limit=5")
    await call("POST", "/api/v1/users", "/api/v1/users", json={"user_id": f"{bob}x", "name": "Key Order"})
    await call("GET", "/api/v1/asset-types", "/api/v1/asset-types")
    await call("GET", "/api/v1/events", "/api/v1/events?limit=20")
    hook = await call("POST", "/api/v1/webhooks", "/api/v1/webhooks",
                      json={"url": "http://127.0.0.1:9/hook", "description": "key order"})  # fmt: skip
    await call(
        "PATCH", "/api/v1/webhooks/{webhook_id}", f"/api/v1/webhooks/{hook['id']}", json={"active": False}
    )
    await call("GET", "/api/v1/webhooks", "/api/v1/webhooks")
    await call("GET", "/api/v1/webhooks/{webhook_id}", f"/api/v1/webhooks/{hook['id']}")
    events = (await admin.get("/api/v1/events?limit=1")).json()["data"]
    dead_id = await pool.fetchval(
        "INSERT INTO webhook_dead_letters (endpoint_id, event_id, event_type, body, attempts, last_error)"
        " VALUES ($1, $2, $3, $4, 1, 'HTTP 500') RETURNING id",
        hook["id"],
        events[0]["id"],
        events[0]["type"],
        json.dumps(events[0]),
    )
    await call(
        "GET", "/api/v1/webhooks/{webhook_id}/dead-letters", f"/api/v1/webhooks/{hook['id']}/dead-letters"
    )
    await call("POST", "/api/v1/webhooks/{webhook_id}/dead-letters/{dead_letter_id}/redeliver",
               f"/api/v1/webhooks/{hook['id']}/dead-letters/{dead_id}/redeliver")  # fmt: skip
    await call("DELETE", "/api/v1/webhooks/{webhook_id}", f"/api/v1/webhooks/{hook['id']}")
    await call("GET", "/api/v1/me", "/api/v1/me")
    await call("GET", "/api/v1/search/users", f"/api/v1/search/users?q={alice}")
    await call("GET", "/api/v1/audit", "/api/v1/audit")
    await call("GET", "/api/v1/reports/volume", "/api/v1/reports/volume")
    await call("GET", "/health", "/health")
    # Errors too: from the database (stored, replayed) and from the service.
    short = {"user_id": bob, "asset_type": "DIAMONDS", "amount": 1000}
    key = {"Idempotency-Key": new_key()}
    refused = await admin.post("/api/v1/transactions/spend", json=short, headers=key)
    assert refused.status_code == 409 and _keys(refused.content) == ["error"]
    again = await admin.post("/api/v1/transactions/spend", json=short, headers=key)
    assert again.headers["Idempotent-Replayed"] == "true" and again.content == refused.content
    assert list(refused.json()["error"]) == ["code", "field", "message"]
    missing = await admin.get("/api/v1/transactions/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and list(missing.json()["error"]) == ["code", "field", "message"]
    answers[("GET", "errors")] = [refused, missing]

    # Every route of the API was asked.
    documented = {
        (method.upper(), path) for path, operations in app.openapi()["paths"].items() for method in operations
    }
    assert documented <= set(answers), sorted(documented - set(answers))

    problems: list[str] = []
    for (method, template), responses in answers.items():
        for response in responses:
            if response.content:
                assert response.headers["content-type"] == "application/json", template
                _check(
                    json.loads(response.content, object_pairs_hook=_pairs), f"{method} {template}", problems
                )
    assert not problems, "\n".join(problems)
    # metadata is the caller's: as stored (jsonb orders keys by length; numbers as sent, see
    # test_hardening: httpx sent 1.10 as 1.1 here).
    assert (
        b'"metadata":{"a":{"b":1.1,"y":2},"zeta":1}'
        in answers[("POST", "/api/v1/transactions/topup")][0].content
    )
