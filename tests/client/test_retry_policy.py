"""The retry policy and the error mapping on scripted answers (httpx.MockTransport, no service):
what is retried and what never is, the bounds (attempts, total time, Retry-After cap), the
jitter, and errors that are not the service's error document. Both clients, one implementation."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from tests.client.conftest import Api
from wallet_client import (
    AsyncWalletClient,
    BadRequest,
    Conflict,
    Forbidden,
    Health,
    IdempotencyKeyInUse,
    InsufficientFunds,
    InternalServerError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RetryPolicy,
    ServiceUnavailable,
    Unauthorized,
    UnexpectedResponse,
    ValidationFailed,
    WalletAPIError,
    WalletClient,
    WalletConnectionError,
)
from wallet_client._core import Attempts, parse_retry_after, posting

FAST = RetryPolicy(
    max_attempts=4, total_timeout=10, backoff_base=0.001, backoff_max=0.01, retry_after_max=0.02
)

TRANSACTION = {
    "id": "5f0c6a36-0000-4000-8000-000000000001",
    "type": "topup",
    "status": "posted",
    "user_id": "u1",
    "asset_type": "GOLD_COINS",
    "amount": 9_007_199_254_740_993,  # above 2**53: exact only as an int
    "balance_after": 9_007_199_254_740_993,
    "description": None,
    "metadata": {},
    "idempotency_key": "k",
    "created_at": "2026-11-26T12:00:00.000001Z",
    "entries": [],
}


def error(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"error": {"code": code, "message": f"{code} happened", "field": "amount"}}
    return httpx.Response(status, json=body, headers=headers)


class Script:
    """Answers requests from a list (the last one repeats), recording each request."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    @property
    def count(self) -> int:
        return len(self.requests)

    def keys(self) -> list[str | None]:
        return [r.headers.get("Idempotency-Key") for r in self.requests]


def scripted(kind: str, script: Script, retry: RetryPolicy = FAST) -> Api:
    transport = httpx.MockTransport(script)
    client: WalletClient | AsyncWalletClient
    if kind == "async":
        client = AsyncWalletClient("http://wallet.test", "wk_test", retry=retry, transport=transport)
    else:
        client = WalletClient("http://wallet.test", "wk_test", retry=retry, transport=transport)
    return Api(kind, client, script)  # type: ignore[arg-type]


def created(**overrides: Any) -> httpx.Response:
    return httpx.Response(201, json=TRANSACTION | overrides)


async def test_503_then_success_same_key_and_retry_after_honoured_up_to_the_cap(kind):
    script = Script(
        error(503, "busy", {"Retry-After": "1"}), error(503, "busy", {"Retry-After": "1"}), created()
    )
    api = scripted(kind, script)
    started = time.monotonic()
    transaction = await api("topup", "u1", "GOLD_COINS", 5)
    elapsed = time.monotonic() - started
    assert script.count == 3
    assert len(set(script.keys())) == 1 and script.keys()[0] is not None
    assert transaction.amount == 9_007_199_254_740_993 and isinstance(transaction.amount, int)
    assert 0.04 <= elapsed < 0.9  # two waits of Retry-After capped at 0.02 s (plus jitter), not 1 s each
    body = json.loads(script.requests[0].content)
    assert body == {"user_id": "u1", "asset_type": "GOLD_COINS", "amount": 5}
    assert script.requests[0].headers["Authorization"] == "Bearer wk_test"


async def test_connection_errors_and_timeouts_are_retried_with_the_same_key(kind):
    request = httpx.Request("POST", "http://wallet.test")
    script = Script(
        httpx.ConnectError("refused", request=request),
        httpx.ReadTimeout("slow", request=request),
        httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request),
        created(),
    )
    api = scripted(kind, script)
    await api("spend", "u1", "GOLD_COINS", 5, idempotency_key="order-1")
    assert script.keys() == ["order-1"] * 4


async def test_reads_are_retried_too_without_a_key(kind):
    script = Script(error(502, "http_502"), httpx.Response(200, json={"data": []}))
    api = scripted(kind, script)
    assert await api("list_asset_types") == []
    assert script.count == 2 and script.keys() == [None, None]


@pytest.mark.parametrize(
    ("status", "code", "exc_type"),
    [
        (400, "idempotency_key_missing", BadRequest),
        (401, "unauthenticated", Unauthorized),
        (403, "forbidden", Forbidden),
        (403, "key_amount_over_limit", Forbidden),
        (404, "user_not_found", NotFound),
        (409, "insufficient_funds", InsufficientFunds),
        (409, "hold_expired", Conflict),
        (413, "body_too_large", PayloadTooLarge),
        (422, "validation_error", ValidationFailed),
        (429, "rate_limited", RateLimited),
        (500, "internal_error", InternalServerError),
        (409, "a_code_from_the_future", Conflict),
        (418, "teapot", WalletAPIError),
    ],
)
async def test_4xx_and_500_are_never_retried(kind, status, code, exc_type):
    script = Script(error(status, code, {"Retry-After": "3"}), created())
    api = scripted(kind, script)
    with pytest.raises(exc_type) as info:
        await api("topup", "u1", "GOLD_COINS", 5)
    assert script.count == 1
    err = info.value
    assert type(err) is exc_type
    assert (err.status, err.code, err.message, err.field) == (status, code, f"{code} happened", "amount")
    assert err.idempotency_key == script.keys()[0] and err.attempts == 1
    assert err.retry_after == 3.0


async def test_idempotency_key_in_use_is_retried_unless_disabled(kind):
    script = Script(error(409, "idempotency_key_in_use"), created())
    assert (await scripted(kind, script)("topup", "u1", "GOLD_COINS", 5)).amount == TRANSACTION["amount"]
    assert script.count == 2 and len(set(script.keys())) == 1

    script = Script(error(409, "idempotency_key_in_use"), created())
    no_in_use = RetryPolicy(max_attempts=4, backoff_base=0.001, retry_in_use=False)
    with pytest.raises(IdempotencyKeyInUse) as info:
        await scripted(kind, script, no_in_use)("topup", "u1", "GOLD_COINS", 5)
    assert isinstance(info.value, Conflict) and script.count == 1


async def test_attempts_are_bounded_and_the_last_answer_is_raised(kind):
    request = httpx.Request("GET", "http://wallet.test")
    script = Script(httpx.ConnectError("refused", request=request))
    with pytest.raises(WalletConnectionError) as info:
        await scripted(kind, script)("topup", "u1", "GOLD_COINS", 5, idempotency_key="k-9")
    assert script.count == FAST.max_attempts == info.value.attempts
    assert info.value.idempotency_key == "k-9" and isinstance(info.value.__cause__, httpx.ConnectError)

    script = Script(error(503, "database_unavailable"))
    with pytest.raises(ServiceUnavailable) as unavailable:
        await scripted(kind, script)("get_balances", "u1")
    assert script.count == FAST.max_attempts and unavailable.value.code == "database_unavailable"


async def test_total_time_is_bounded(kind):
    # Retry-After: 1 s (capped at 5) would end past the 0.3 s budget: no retry is started.
    script = Script(error(503, "busy", {"Retry-After": "1"}), created())
    budget = RetryPolicy(max_attempts=10, total_timeout=0.3, retry_after_max=5)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as info:
        await scripted(kind, script, budget)("topup", "u1", "GOLD_COINS", 5)
    assert script.count == 1 and info.value.attempts == 1 and time.monotonic() - started < 0.3


async def test_answers_that_are_not_the_error_document(kind):
    # uvicorn's own 503 over its connection limit is plain text: still typed, and still retried.
    script = Script(httpx.Response(503, text="Service Unavailable"))
    with pytest.raises(ServiceUnavailable) as info:
        await scripted(kind, script)("get_hold", "h1")
    assert (info.value.code, info.value.message, script.count) == ("http_503", "Service Unavailable", 4)
    script = Script(httpx.Response(201, text="<html>proxy</html>"))
    with pytest.raises(UnexpectedResponse):
        await scripted(kind, script)("topup", "u1", "GOLD_COINS", 5)
    script = Script(created(amount=5.0))  # a float amount is refused, never rounded
    with pytest.raises(UnexpectedResponse, match="amount"):
        await scripted(kind, script)("topup", "u1", "GOLD_COINS", 5)


async def test_health_reports_degraded_without_raising_or_retrying(kind):
    script = Script(httpx.Response(503, json={"status": "degraded", "database": "unavailable"}))
    health = await scripted(kind, script)("health")
    assert health == Health("degraded", "unavailable") and not health.ok and script.count == 1


async def test_the_replayed_header_reaches_the_result(kind):
    script = Script(httpx.Response(201, json=TRANSACTION, headers={"Idempotent-Replayed": "true"}))
    assert (await scripted(kind, script)("topup", "u1", "GOLD_COINS", 5, idempotency_key="k")).replayed


def test_each_logical_call_gets_its_own_key_and_keeps_it():
    first = posting("topup", "u1", "G1", 1, description=None, metadata=None, idempotency_key=None)
    second = posting("topup", "u1", "G1", 1, description=None, metadata=None, idempotency_key=None)
    assert (
        first.idempotency_key and second.idempotency_key and first.idempotency_key != second.idempotency_key
    )
    attempts = Attempts(first, FAST, timeout=5)
    sent = [attempts.request()["headers"]["Idempotency-Key"] for _ in range(3)]
    assert sent == [first.idempotency_key] * 3


def test_backoff_is_full_jitter_within_exponential_bounds():
    policy = RetryPolicy(backoff_base=0.1, backoff_max=1.0)
    rng = random.Random(5)
    for retry, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (40, 1.0), (500, 1.0)]:
        delays = [policy.backoff(retry, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8 and min(delays) < ceiling * 0.2  # spread over the range


def test_retry_after_as_seconds_or_http_date_and_the_cap():
    now = time.time()
    assert parse_retry_after("2", now) == 2.0
    date = format_datetime(datetime.fromtimestamp(now, UTC) + timedelta(seconds=30), usegmt=True)
    assert 28 <= (parse_retry_after(date, now) or 0) <= 31
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None

    clock = [0.0]
    call = posting("topup", "u1", "G1", 1, description=None, metadata=None, idempotency_key="k")
    policy = RetryPolicy(backoff_base=0.0, retry_after_max=4.0)
    attempts = Attempts(call, policy, timeout=5, clock=lambda: clock[0], rng=random.Random(1))
    attempts.request()
    assert attempts.retry_delay(error(503, "busy", {"Retry-After": "120"})) == 4.0
    assert attempts.retry_delay(error(503, "busy", {"Retry-After": "1"})) == 1.0
    assert attempts.retry_delay(error(409, "insufficient_funds")) is None
    assert attempts.retry_delay(httpx.Response(201)) is None


def test_policy_refuses_to_retry_4xx_statuses():
    with pytest.raises(ValueError, match="4xx"):
        RetryPolicy(retry_statuses=frozenset({429, 503}))
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_requests_are_checked_before_anything_is_sent():
    def nothing(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    client = WalletClient("http://wallet.test", "wk", transport=httpx.MockTransport(nothing))
    with pytest.raises(TypeError, match="int"):
        client.topup("u1", "GOLD_COINS", 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int"):
        client.transfer("u1", "u2", "GOLD_COINS", True)
    with pytest.raises(ValueError, match="aware"):
        client.get_history("u1", from_time=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="transaction_id must not be empty"):
        client.get_transaction("")
    client.close()
