"""The hot routes' fast path (api/fast_path.py) answers exactly as the full FastAPI path does.

A request with a query string always takes the full path, so each pair below is the same
request answered once by each path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.support import new_key
from wallet.api.fast_path import FAST_PATH


def _taken() -> dict[str, float]:
    counts: dict[str, float] = {}
    for metric in FAST_PATH.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                counts[sample.labels["taken"]] = sample.value
    return counts


async def test_a_write_and_its_replay_are_the_same_bytes_on_either_path(client, make_user):
    user = await make_user(GOLD_COINS=100)
    for kind in ("topup", "bonus", "spend"):
        for first_path, replay_path in (("", "?full=1"), ("?full=1", "")):
            key = new_key()
            body: dict[str, Any] = {
                "user_id": user,
                "asset_type": "GOLD_COINS",
                "amount": 3,
                "metadata": {"n": 1.50},
            }
            before = _taken()
            first = await client.post(
                f"/api/v1/transactions/{kind}{first_path}", json=body, headers={"Idempotency-Key": key}
            )
            replay = await client.post(
                f"/api/v1/transactions/{kind}{replay_path}",
                json=body,
                headers={"Idempotency-Key": f'"{key}"'},
            )
            after = _taken()
            assert first.status_code == replay.status_code == 201, first.text
            assert replay.content == first.content
            assert replay.headers["Idempotent-Replayed"] == "true"
            assert after.get("yes", 0) - before.get("yes", 0) == 1
            assert after.get("no", 0) - before.get("no", 0) == 1


@pytest.fixture
async def anonymous(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        yield http


async def test_refusals_are_the_full_paths_own(client, anonymous, make_user):
    user = await make_user(GOLD_COINS=5)
    good = {"user_id": user, "asset_type": "GOLD_COINS", "amount": 1}
    spend = "/api/v1/transactions/spend"
    malformed = {"content": b"{", "headers": {"Content-Type": "application/json"}}
    cases = [
        (client, "POST", spend, {"json": good | {"amount": 10}}, 409, "insufficient_funds"),
        (client, "POST", spend, {"json": good | {"user_id": "nobody"}}, 404, "user_not_found"),
        (client, "POST", spend, {"json": good | {"amount": 0}}, 422, "validation_error"),
        (client, "POST", spend, malformed, 400, "malformed_json"),
        (anonymous, "POST", spend, {"json": good}, 401, "unauthenticated"),
        (client, "GET", f"/api/v1/wallets/{user}/balance?asset_type=NOPE", {}, 404, "asset_type_not_found"),
        (client, "GET", "/api/v1/wallets/nobody/balance", {}, 404, "user_not_found"),
        (anonymous, "GET", f"/api/v1/wallets/{user}/balance", {}, 401, "unauthenticated"),
    ]
    for http, method, path, kwargs, status, code in cases:
        headers = {"Idempotency-Key": new_key(), **kwargs.pop("headers", {})}
        response = await http.request(method, path, headers=headers, **kwargs)
        assert response.status_code == status, (path, response.text)
        assert response.json()["error"]["code"] == code
    fast = await client.get(f"/api/v1/wallets/{user}/balance")
    full = await client.get(f"/api/v1/wallets/{user}/balance?as_of=2999-01-01T00:00:00Z")
    assert fast.status_code == full.status_code == 200
    assert [b["balance"] for b in fast.json()["balances"]] == [b["balance"] for b in full.json()["balances"]]
