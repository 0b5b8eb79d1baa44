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


def test_the_hot_dispatch_finds_the_routes_the_router_would():
    """HotRoutes (before any routing) and FastAPI's router agree on which route a path is."""
    from starlette.routing import Match

    from wallet.api.app import _hot_routes, create_app
    from wallet.settings import Settings

    app = create_app(Settings(database_url="postgresql://unused@127.0.0.1/unused"))
    hot = app.edge.app  # ObserveRequests -> HotRoutes
    routes = {(h.method, h.route.path) for h in _hot_routes(app)}
    assert routes == {
        ("POST", "/api/v1/transactions/topup"),
        ("POST", "/api/v1/transactions/bonus"),
        ("POST", "/api/v1/transactions/spend"),
        ("GET", "/api/v1/wallets/{user_id}/balance"),
    }
    for method, path in [
        ("POST", "/api/v1/transactions/topup"),
        ("POST", "/api/v1/transactions/spend"),
        ("GET", "/api/v1/wallets/user_001/balance"),
        ("GET", "/api/v1/wallets/a.b:c-d/balance"),
    ]:
        found = hot._match(method, path)
        assert found is not None, path
        scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
        full = next(r for r in app.router.routes if r.matches(scope)[0] is Match.FULL)
        (context,) = [c for c in full.effective_route_contexts() if c.original_route is found[0].route]
        assert context.path_regex.match(path)
    for method, path in [
        ("GET", "/api/v1/transactions/topup"),
        ("POST", "/api/v1/transactions/topup/"),
        ("GET", "/api/v1/wallets/user_001/balance/"),
        ("GET", "/api/v1/wallets//balance"),
        ("GET", "/api/v1/wallets/a/b/balance"),
        ("POST", "/api/v1/wallets/user_001/balance"),
    ]:
        assert hot._match(method, path) is None, (method, path)


async def test_head_and_errors_on_the_hot_dispatch_keep_the_edge(client, anonymous, make_user):
    user = await make_user(GOLD_COINS=7)
    before = _taken()
    get = await client.get(f"/api/v1/wallets/{user}/balance", headers={"X-Request-ID": "hot-get-1"})
    head = await client.head(f"/api/v1/wallets/{user}/balance", headers={"X-Request-ID": "hot-head-1"})
    assert get.status_code == head.status_code == 200
    assert head.content == b"" and head.headers["content-length"] == get.headers["content-length"]
    assert (get.headers["X-Request-ID"], head.headers["X-Request-ID"]) == ("hot-get-1", "hot-head-1")
    assert _taken().get("yes", 0) - before.get("yes", 0) == 2
    refused = await anonymous.post(
        "/api/v1/transactions/topup",
        json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 1},
        headers={"Idempotency-Key": new_key(), "X-Request-ID": "hot-401"},
    )
    assert refused.status_code == 401 and refused.headers["X-Request-ID"] == "hot-401"
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert set(refused.json()) == {"error"} and refused.json()["error"]["code"] == "unauthenticated"


async def test_writes_of_one_turn_of_the_loop_go_out_as_one():
    import asyncio

    from wallet.api.app import _CoalescingTransport

    class Recorder:
        def __init__(self) -> None:
            self.writes: list[bytes] = []
            self.closed = False

        def write(self, data: bytes) -> None:
            self.writes.append(data)

        def is_closing(self) -> bool:
            return self.closed

        def close(self) -> None:
            self.closed = True

        def get_extra_info(self, name: str) -> str:
            return f"info:{name}"

    recorder = Recorder()
    transport = _CoalescingTransport(recorder, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"body")
    assert recorder.writes == []
    await asyncio.sleep(0)
    assert recorder.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    transport.write(b"last")
    transport.close()
    assert recorder.writes[-1] == b"last" and recorder.closed
    assert transport.get_extra_info("peername") == "info:peername"
