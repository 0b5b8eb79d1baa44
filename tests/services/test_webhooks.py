"""Webhook delivery against a real HTTP receiver on a local port: signed, in feed order per
endpoint, at least once through a receiver that refuses connections and then answers 500 for a
while, dead-lettered after the maximum attempts (and redelivered on request), never delivered to
one endpoint by two processes at once. Each test has a database of its own, and its own app
instances with fast polling and short backoffs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.support import bearer, new_key
from wallet.api.app import create_app
from wallet.services.api_keys import create_api_key
from wallet.services.events import Position, prune_events
from wallet.services.seed import seed_reference_data
from wallet.services.webhooks import sign, signing_key, verify_signature
from wallet.settings import Settings

# --- A real receiver -------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 in a thread of its own. `up()` listens, `down()` stops listening
    (connections are refused); `status` and `fail` decide the answers; `delay_s` slows each one."""

    port: int = 0
    status: int = 200
    fail: Callable[[str, bytes], bool] = lambda path, body: False
    delay_s: float = 0.0
    requests: list[Received] = field(default_factory=list)
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    def __post_init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{name}"

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    count = receiver.in_flight.get(self.path, 0) + 1
                    receiver.in_flight[self.path] = count
                    receiver.max_in_flight[self.path] = max(count, receiver.max_in_flight.get(self.path, 0))
                try:
                    time.sleep(receiver.delay_s)
                    status = 500 if receiver.fail(self.path, body) else receiver.status
                    with receiver._lock:
                        receiver.requests.append(
                            Received(self.path, dict(self.headers.items()), body, status)
                        )
                finally:
                    with receiver._lock:
                        receiver.in_flight[self.path] -= 1
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def got(self, name: str, *, ok_only: bool = False) -> list[Received]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.path == f"/hook/{name}" and (not ok_only or 200 <= r.status < 300)
            ]


@pytest.fixture
def receiver() -> Any:
    r = Receiver()
    r.up()
    yield r
    r.down()


# --- A database and app instances of the test's own ---------------------------------------------------


@pytest.fixture
async def hooks_db(create_migrated_database) -> str:
    url = await create_migrated_database()
    conn = await asyncpg.connect(url)
    try:
        await seed_reference_data(conn)
    finally:
        await conn.close()
    return url


def _settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "db_pool_min_size": 1,
        "db_pool_max_size": 8,
        "auth_cache_ttl_ms": 0,
        "key_usage_flush_ms": 0,
        "hold_sweep_interval_ms": 0,
        "webhook_poll_interval_ms": 30,
        "webhook_backoff_base_ms": 20,
        "webhook_backoff_cap_ms": 150,
        "webhook_timeout_ms": 3_000,
        "webhook_max_attempts": 100,
    }
    return Settings(**(values | overrides))


@contextlib.asynccontextmanager
async def wallet(url: str, **overrides: Any) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """An app instance (with its delivery task running) and an admin client for it."""
    app = create_app(_settings(url, **overrides))
    async with app.router.lifespan_context(app):
        async with app.state.resources.pool.acquire() as conn:
            key = await create_api_key(conn, f"hooks-{uuid.uuid4().hex[:8]}", ["admin"])
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://wallet.test",
            headers=bearer(key),
            timeout=30,
        ) as client:
            yield app, client


async def _user(client: httpx.AsyncClient, gold: int = 0) -> str:
    user_id = f"u_{uuid.uuid4().hex[:12]}"
    assert (
        await client.post("/api/v1/users", json={"user_id": user_id, "name": "Hooked"})
    ).status_code == 201
    if gold:
        await _topup(client, user_id, gold)
    return user_id


async def _topup(
    client: httpx.AsyncClient, user_id: str, amount: int, description: str | None = None
) -> dict:
    response = await client.post(
        "/api/v1/transactions/topup",
        headers={"Idempotency-Key": new_key()},
        json={"user_id": user_id, "asset_type": "GOLD_COINS", "amount": amount, "description": description},
    )
    assert response.status_code == 201, response.text
    return response.json()


async def _register(client: httpx.AsyncClient, url: str, **extra: Any) -> dict:
    response = await client.post("/api/v1/webhooks", json={"url": url, **extra})
    assert response.status_code == 201, response.text
    return response.json()


async def _feed(client: httpx.AsyncClient, after: str) -> list[dict]:
    """Every event visible after `after`, in feed order."""
    events: list[dict] = []
    while True:
        page = (await client.get("/api/v1/events", params={"after": after, "limit": 200})).json()
        events += page["data"]
        after = page["next_cursor"]
        if not page["has_more"]:
            return events


async def wait_for(predicate: Callable[[], Any], timeout_s: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _delivered(client: httpx.AsyncClient, endpoint_id: int, count: int) -> dict:
    """The endpoint's delivery state once it has recorded `count` deliveries (the receiver sees a
    request before the deliverer sees its answer)."""

    async def state() -> dict | None:
        delivery = (await client.get(f"/api/v1/webhooks/{endpoint_id}")).json()["delivery"]
        return delivery if delivery["delivered"] >= count else None

    result: dict = await wait_for(state, what=f"{count} deliveries recorded")
    return result


def _first_arrivals(requests: list[Received]) -> list[int]:
    """Event ids in order of first successful arrival (at least once: repeats are dropped)."""
    seen: list[int] = []
    for r in requests:
        if 200 <= r.status < 300 and r.event["id"] not in seen:
            seen.append(r.event["id"])
    return seen


# --- Tests ---------------------------------------------------------------------------------------------


async def test_deliveries_are_signed_and_carry_the_feed_document(hooks_db, receiver):
    async with wallet(hooks_db) as (_, client):
        every = await _register(client, receiver.url("every"), description="all of it")
        holds_only = await _register(client, receiver.url("holds"), event_types=["hold.placed"])
        assert every["secret"].startswith("whsec_") and every["secret"] != holds_only["secret"]
        user = await _user(client)
        topup = await _topup(client, user, 100)
        hold = await client.post(
            "/api/v1/holds",
            headers={"Idempotency-Key": new_key()},
            json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 10},
        )
        assert hold.status_code == 201
        await wait_for(lambda: len(receiver.got("every")) >= 2 and receiver.got("holds"), what="deliveries")
        feed = {e["id"]: e for e in await _feed(client, every["delivery"]["cursor"])}

        for request in receiver.got("every"):
            # As a receiver verifies: with a Standard Webhooks library and the secret as shown.
            assert Webhook(every["secret"]).verify(request.body, request.headers) == request.event
            with pytest.raises(WebhookVerificationError):
                Webhook(holds_only["secret"]).verify(request.body, request.headers)
            with pytest.raises(WebhookVerificationError):
                Webhook(every["secret"]).verify(request.body + b" ", request.headers)
            headers = {k.lower(): v for k, v in request.headers.items()}
            assert headers["webhook-id"] == str(request.event["id"])
            assert headers["webhook-signature"].startswith("v1,")
            # The deprecated signature, still sent alongside for one release.
            timestamp, signature = headers["x-wallet-timestamp"], headers["x-wallet-signature"]
            assert timestamp == headers["webhook-timestamp"]
            assert signature == sign(every["secret"], timestamp, request.body)
            assert verify_signature(every["secret"], timestamp, request.body, signature)
            assert not verify_signature(holds_only["secret"], timestamp, request.body, signature)
            assert not verify_signature(every["secret"], timestamp, request.body + b" ", signature)
            assert not verify_signature(
                every["secret"], timestamp, request.body, signature, now=time.time() + 3600
            )
            assert headers["content-type"] == "application/json"
            assert headers["x-wallet-event-id"] == str(request.event["id"])
            assert headers["x-wallet-event-type"] == request.event["type"]
            assert request.event == feed[request.event["id"]]
        assert [(r.event["type"], r.event["payload"]["id"]) for r in receiver.got("every")] == [
            ("transaction.posted", topup["id"]),
            ("hold.placed", hold.json()["id"]),
        ]
        assert [r.event["type"] for r in receiver.got("holds")] == ["hold.placed"]

        await _delivered(client, every["id"], 2)
        state = (await client.get(f"/api/v1/webhooks/{every['id']}")).json()
        assert state["delivery"]["delivered"] == 2 and state["delivery"]["attempts"] == 0
        assert state["delivery"]["cursor"] == receiver.got("every")[-1].event["cursor"]
        assert state["delivery"]["last_error"] is None and state["delivery"]["dead_letters"] == 0
        assert "secret" not in state
        listed = (await client.get("/api/v1/webhooks")).json()["data"]
        assert [w["id"] for w in listed] == [every["id"], holds_only["id"]]


async def test_secrets_made_before_standard_webhooks_keep_working(hooks_db, receiver):
    """An endpoint whose secret was made as before (URL-safe base64, no padding): the deprecated
    signature still verifies with it as it is; the standard one with the same secret in the
    standard alphabet, the same key bytes."""
    old_secret = "whsec_" + secrets.token_urlsafe(32)
    while not set("-_") & set(old_secret):  # one that needs the conversion
        old_secret = "whsec_" + secrets.token_urlsafe(32)
    async with wallet(hooks_db) as (_, client):
        endpoint = await _register(client, receiver.url("old"))
        conn = await asyncpg.connect(hooks_db)
        try:
            await conn.execute(
                "UPDATE webhook_endpoints SET secret = $2 WHERE id = $1", endpoint["id"], old_secret
            )
        finally:
            await conn.close()
        await _topup(client, await _user(client), 5)
        await wait_for(lambda: receiver.got("old", ok_only=True), what="a delivery")
    request = receiver.got("old", ok_only=True)[0]
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert verify_signature(
        old_secret, headers["x-wallet-timestamp"], request.body, headers["x-wallet-signature"]
    )
    body = old_secret.removeprefix("whsec_")
    standard_alphabet = "whsec_" + body.replace("-", "+").replace("_", "/")
    assert Webhook(standard_alphabet).verify(request.body, request.headers) == request.event
    assert (
        signing_key(old_secret)
        == signing_key(standard_alphabet)
        == base64.urlsafe_b64decode(old_secret.removeprefix("whsec_") + "=")
    )


async def test_a_receiver_down_for_a_while_gets_everything_in_order_at_least_once(hooks_db, receiver):
    receiver.down()  # connections refused
    async with wallet(hooks_db) as (_, client):
        endpoint = await _register(client, receiver.url("flaky"))
        users = [await _user(client) for _ in range(3)]
        await asyncio.gather(*(_topup(client, users[n % 3], n + 1) for n in range(15)))
        for n in range(5):
            await _topup(client, users[0], 100 + n)

        async def state() -> dict:
            return (await client.get(f"/api/v1/webhooks/{endpoint['id']}")).json()["delivery"]

        down = await wait_for(lambda: _attempted(state, 3), what="three refused attempts")
        assert down["last_error"].startswith("no HTTP answer")

        receiver.status = 500  # listening again, but failing
        receiver.up()
        await wait_for(lambda: len(receiver.got("flaky")) >= 3, what="three answers of 500")
        assert (await state())["last_error"] == "HTTP 500"
        receiver.status = 200

        expected = [e["id"] for e in await _feed(client, endpoint["delivery"]["cursor"])]
        assert len(expected) == 20
        await wait_for(lambda: len(_first_arrivals(receiver.got("flaky"))) == 20, what="all 20 events")
        requests = receiver.got("flaky")
        assert _first_arrivals(requests) == expected
        # While failing, the first event was tried again and again; nothing later went ahead of it.
        failed = [r.event["id"] for r in requests if r.status == 500]
        assert set(failed) == {expected[0]}
        final = await _delivered(client, endpoint["id"], 20)
        assert final["delivered"] == 20 and final["dead_letters"] == 0 and final["attempts"] == 0


async def _attempted(state: Callable[[], Any], attempts: int) -> dict | None:
    current = await state()
    return current if current["attempts"] >= attempts else None


async def test_last_error_does_not_tell_a_closed_port_from_a_silent_or_non_http_one(hooks_db, receiver):
    """An admin registering internal URLs must not learn which ports are open from last_error:
    every failure without an HTTP answer reads the same (the detail goes to the log)."""

    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")  # open, not HTTP
        await writer.drain()
        writer.close()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(2)
        writer.close()

    servers = [await asyncio.start_server(h, "127.0.0.1", 0) for h in (banner, hang_up, silent)]
    urls = {
        name: f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
        for name, server in zip(("banner", "hang_up", "silent"), servers, strict=True)
    }
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        urls["closed"] = f"http://127.0.0.1:{probe.getsockname()[1]}/hook"
    urls["unresolvable"] = "http://no-such-host.invalid/hook"
    receiver.status = 500
    try:
        async with wallet(hooks_db, webhook_timeout_ms=300) as (app, client):
            endpoints = {name: await _register(client, url) for name, url in urls.items()}
            failing = await _register(client, receiver.url("failing"))
            await _topup(client, await _user(client), 1)

            async def last_error(endpoint: dict) -> str | None:
                state = (await client.get(f"/api/v1/webhooks/{endpoint['id']}")).json()["delivery"]
                return state["last_error"] if state["attempts"] >= 1 else None

            errors = {
                name: await wait_for(lambda e=e: last_error(e), what=name) for name, e in endpoints.items()
            }
            assert set(errors.values()) == {
                "no HTTP answer (could not connect, or no valid answer within 300 ms)"
            }, errors
            assert await wait_for(lambda: last_error(failing), what="an HTTP 500") == "HTTP 500"
            # A last_error stored before there were categories shows as its category. (A new
            # endpoint: no event after its position, so no delivery writes over it.)
            quiet = (await _register(client, urls["closed"]))["id"]
            await app.state.resources.pool.execute(
                "UPDATE webhook_endpoints SET last_error = $2 WHERE id = $1",
                quiet,
                "ConnectError: [Errno 111] Connection refused",
            )
            shown = (await client.get(f"/api/v1/webhooks/{quiet}")).json()["delivery"]["last_error"]
            listed = [w for w in (await client.get("/api/v1/webhooks")).json()["data"] if w["id"] == quiet]
            assert shown == listed[0]["delivery"]["last_error"] == "no HTTP answer"
    finally:
        for server in servers:
            server.close()


async def test_an_event_refused_max_attempts_times_is_dead_lettered_and_can_be_redelivered(
    hooks_db, receiver
):
    receiver.fail = lambda path, body: b"poison" in body
    async with wallet(hooks_db, webhook_max_attempts=3) as (_, client):
        endpoint = await _register(client, receiver.url("strict"))
        user = await _user(client)
        before = await _topup(client, user, 1)
        poison = await _topup(client, user, 2, description="poison")
        after = await _topup(client, user, 3)
        await wait_for(lambda: len(receiver.got("strict", ok_only=True)) == 2, what="the events around it")
        sent = [(r.event["payload"]["id"], r.status) for r in receiver.got("strict")]
        assert sent == [(before["id"], 200), *[(poison["id"], 500)] * 3, (after["id"], 200)]

        letters = (await client.get(f"/api/v1/webhooks/{endpoint['id']}/dead-letters")).json()
        assert letters["next_cursor"] is None
        [letter] = letters["data"]
        assert letter["event"]["payload"]["id"] == poison["id"]
        assert letter["event"] == receiver.got("strict")[1].event
        assert (letter["attempts"], letter["last_error"], letter["status"]) == (3, "HTTP 500", "dead")
        assert letter["event_id"] == letter["event"]["id"] and letter["event_type"] == "transaction.posted"
        state = await _delivered(client, endpoint["id"], 2)
        assert (state["delivered"], state["dead_letters"], state["attempts"]) == (2, 1, 0)

        receiver.fail = lambda path, body: False
        queued = await client.post(f"/api/v1/webhooks/{endpoint['id']}/dead-letters/{letter['id']}/redeliver")
        assert queued.status_code == 202 and queued.json()["status"] == "redeliver"

        async def redelivered() -> bool:
            page = (await client.get(f"/api/v1/webhooks/{endpoint['id']}/dead-letters")).json()
            return page["data"][0]["status"] == "redelivered"

        await wait_for(redelivered, what="the redelivery")
        last = receiver.got("strict")[-1]
        assert last.status == 200 and last.body == receiver.got("strict")[1].body
        state = (await client.get(f"/api/v1/webhooks/{endpoint['id']}")).json()["delivery"]
        assert state["dead_letters"] == 0

        missing = await client.post(f"/api/v1/webhooks/{endpoint['id']}/dead-letters/999999/redeliver")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "dead_letter_not_found"


async def test_two_instances_never_deliver_to_one_endpoint_at_once(hooks_db, receiver):
    receiver.delay_s = 0.02
    # Short turns (two events each), so that the two instances keep taking turns on each endpoint.
    fast = {"webhook_poll_interval_ms": 10, "webhook_events_per_turn": 2}
    async with wallet(hooks_db, **fast) as (first, client), wallet(hooks_db, **fast) as (second, _):
        endpoints = [await _register(client, receiver.url(f"shared{n}")) for n in range(3)]
        users = [await _user(client) for _ in range(4)]
        await asyncio.gather(*(_topup(client, users[n % 4], n + 1) for n in range(30)))
        expected = [e["id"] for e in await _feed(client, endpoints[0]["delivery"]["cursor"])]
        assert len(expected) == 30
        for n in range(3):
            await wait_for(
                lambda n=n: len(_first_arrivals(receiver.got(f"shared{n}"))) == 30, what=f"endpoint {n}"
            )
        for n in range(3):
            requests = receiver.got(f"shared{n}")
            assert [r.event["id"] for r in requests] == expected  # in order, and once each
            assert receiver.max_in_flight[f"/hook/shared{n}"] == 1
        deliverers = [first.state.webhook_deliverer, second.state.webhook_deliverer]
        assert all(d.turns > 0 for d in deliverers), [d.turns for d in deliverers]
        assert sum(d.turns_skipped for d in deliverers) > 0  # they did compete for the endpoints


async def test_a_delivery_cut_before_its_answer_is_recorded_is_sent_again(hooks_db, receiver):
    receiver.delay_s = 0.5
    async with wallet(hooks_db) as (app, client):
        endpoint = await _register(client, receiver.url("cut"))
        user = await _user(client)
        topup = await _topup(client, user, 5)
        await wait_for(lambda: receiver.in_flight.get("/hook/cut"), what="the request in flight")
        deliverer = app.state.webhook_deliverer
        await deliverer.stop()  # the worker goes away before it records the answer
        await wait_for(lambda: receiver.got("cut"), what="the receiver to answer")
        receiver.delay_s = 0
        deliverer.start()
        await wait_for(lambda: len(receiver.got("cut")) == 2, what="the second delivery")
        assert [r.event["payload"]["id"] for r in receiver.got("cut")] == [topup["id"]] * 2
        state = await _delivered(client, endpoint["id"], 1)
        assert state["delivered"] == 1


async def test_a_paused_endpoint_keeps_its_position_and_resumes(hooks_db, receiver):
    async with wallet(hooks_db) as (_, client):
        endpoint = await _register(client, receiver.url("paused"))
        paused = await client.patch(f"/api/v1/webhooks/{endpoint['id']}", json={"active": False})
        assert paused.status_code == 200 and paused.json()["active"] is False
        user = await _user(client)
        topup = await _topup(client, user, 5)
        await asyncio.sleep(0.3)
        assert receiver.got("paused") == []
        assert (
            await client.patch(f"/api/v1/webhooks/{endpoint['id']}", json={"active": True})
        ).status_code == 200
        await wait_for(lambda: receiver.got("paused"), what="the delivery after resuming")
        assert [r.event["payload"]["id"] for r in receiver.got("paused")] == [topup["id"]]


async def test_webhook_admin_api_errors(hooks_db, receiver):
    async with wallet(hooks_db, webhook_max_endpoints=2) as (app, client):
        for body in (
            {"url": "ftp://example.com/x"},
            {"url": "not a url"},
            {"url": receiver.url("x"), "event_types": ["user.deleted"]},
            {"url": receiver.url("x"), "event_types": []},
            {"url": receiver.url("x"), "event_types": ["transaction.posted", "transaction.posted"]},
            {"url": receiver.url("x"), "secret": "mine"},
            {"url": "http://example.com/" + "a" * 2100},
            {"url": receiver.url("x"), "description": "a\x00b"},  # PostgreSQL text cannot hold it
        ):
            response = await client.post("/api/v1/webhooks", json=body)
            assert response.status_code == 422, (body, response.text)
        nul = await client.post("/api/v1/webhooks", json={"url": receiver.url("x"), "description": "\x00"})
        assert nul.json()["error"] == {
            "code": "invalid_request",
            "message": "description must not contain NUL characters",
            "field": "description",
        }
        # 2,048 characters as sent, 2,049 as stored (a `/` for the empty path): judged as stored.
        host = "http://" + ("a" * 63 + ".") * 31 + "a" * (2048 - 7 - 64 * 31)
        long = await client.post("/api/v1/webhooks", json={"url": host})
        assert (long.status_code, long.json()["error"]) == (
            422,
            {"code": "limit_exceeded", "message": "url must not exceed 2048 characters", "field": "url"},
        )
        twice = await client.post(
            "/api/v1/webhooks",
            json={
                "url": receiver.url("x"),
                "event_types": ["hold.placed", "transaction.posted", "hold.placed"],
            },
        )
        assert twice.status_code == 422 and twice.json()["error"]["field"] == "event_types"
        assert "must not repeat a type: hold.placed" in twice.json()["error"]["message"]
        await _register(client, receiver.url("a"))
        await _register(client, receiver.url("b"))  # none of the refused ones counts
        third = await client.post("/api/v1/webhooks", json={"url": receiver.url("c")})
        assert third.status_code == 422 and third.json()["error"]["code"] == "limit_exceeded"
        for method, path in (
            ("GET", "/api/v1/webhooks/999"),
            ("DELETE", "/api/v1/webhooks/999"),
            ("GET", "/api/v1/webhooks/999/dead-letters"),
            ("POST", "/api/v1/webhooks/999/dead-letters/1/redeliver"),
        ):
            response = await client.request(method, path)
            assert response.status_code == 404 and response.json()["error"]["code"] == "webhook_not_found"
        response = await client.patch("/api/v1/webhooks/999", json={"active": False})
        assert response.status_code == 404
        assert (await client.get("/api/v1/webhooks/0")).status_code == 422
        assert (await client.get("/api/v1/webhooks/99999999999")).status_code == 422
        bad_cursor = await client.get("/api/v1/webhooks/1/dead-letters", params={"cursor": "%%%"})
        assert bad_cursor.status_code == 422

        async with app.state.resources.pool.acquire() as conn:
            reader = await create_api_key(conn, "reader", ["read"])
        forbidden = await client.get("/api/v1/webhooks", headers=bearer(reader))
        assert forbidden.status_code == 403
        for path in (
            "/api/v1/webhooks",
            "/api/v1/webhooks/1",
            "/api/v1/webhooks/1/dead-letters",
            "/api/v1/webhooks/9",
        ):
            get, head = await client.get(path), await client.head(path)
            assert (head.status_code, head.content) == (get.status_code, b""), path
            assert head.headers["content-type"] == get.headers["content-type"], path
        deleted = await client.delete("/api/v1/webhooks/1")
        assert deleted.status_code == 204 and deleted.content == b""
        assert (await client.get("/api/v1/webhooks/1")).status_code == 404


async def test_with_no_endpoint_delivery_costs_one_query_per_poll(hooks_db):
    async with wallet(hooks_db) as (app, client):
        await _topup(client, await _user(client), 5)
        await asyncio.sleep(0.2)
        deliverer = app.state.webhook_deliverer
        assert deliverer.turns == 0 and deliverer._lock_pool is None
    async with wallet(hooks_db, webhook_poll_interval_ms=0) as (app, _):
        assert app.state.webhook_deliverer is None


async def test_retention_deletes_old_events_from_the_start_but_never_undelivered_ones(hooks_db, receiver):
    conn = await asyncpg.connect(hooks_db)
    try:
        # Three events of five hours ago (written directly: the feed is append-only, not its clock).
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO events (type, payload, created_at)"
                " SELECT 'transaction.posted', jsonb_build_object('n', n), now() - interval '5 hours'"
                " FROM generate_series(1, 3) n"
            )
    finally:
        await conn.close()
    async with wallet(hooks_db) as (app, client):
        await _topup(client, await _user(client), 5)
        pool = app.state.resources.pool
        everything = await _feed(client, Position(0, 0).encode())
        old = [e for e in everything if "n" in e["payload"]]
        assert len(old) == 3
        # An endpoint that has delivered only the first of them holds back the other two.
        endpoint = await _register(client, receiver.url("slow"), event_types=["hold.voided"])
        await client.patch(f"/api/v1/webhooks/{endpoint['id']}", json={"active": False})
        first = Position.decode(old[0]["cursor"])
        assert first is not None
        await pool.execute(
            "UPDATE webhook_endpoints SET cursor_txid = $1, cursor_seq = $2", first.txid, first.seq
        )
        assert await prune_events(pool, 1, batch=1) == 1
        assert await prune_events(pool, 1, batch=1000) == 0
        await client.delete(f"/api/v1/webhooks/{endpoint['id']}")
        assert await prune_events(pool, 10, batch=1000) == 0  # not old enough
        assert await prune_events(pool, 1, batch=1) == 2  # batches until done
        left = await _feed(client, Position(0, 0).encode())
        assert [e["id"] for e in left] == [e["id"] for e in everything if "n" not in e["payload"]]
        with pytest.raises(asyncpg.exceptions.RestrictViolationError):
            await pool.execute("DELETE FROM events")
