"""Arguments of the wrong type raise TypeError naming the argument and what it takes (never an
AttributeError from deep inside), before anything is sent; values of the right type that cannot
be right raise ValueError. Both clients, their constructors, RetryPolicy."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime
from typing import Any

import httpx
import pytest

from wallet_client import AsyncWalletClient, BatchOperation, RetryPolicy, ServiceUnavailable, WalletClient

NOW = datetime(2026, 1, 1, tzinfo=UTC)
OP = BatchOperation.topup("u1", "GOLD_COINS", 1)

# (method, args, kwargs, exception, message)
CASES: list[tuple[str, tuple[Any, ...], dict[str, Any], type[Exception], str]] = [
    ("topup", ("u1", "GOLD_COINS", "100"), {}, TypeError, "amount must be an int (minor units), got str"),
    ("topup", ("u1", "GOLD_COINS", 1.0), {}, TypeError, "amount must be an int (minor units), got float"),
    ("topup", ("u1", "GOLD_COINS", True), {}, TypeError, "amount must be an int (minor units), got bool"),
    ("topup", (7, "GOLD_COINS", 1), {}, TypeError, "user_id must be a str, got int"),
    ("topup", ("u1", None, 1), {}, TypeError, "asset_type must be a str, got NoneType"),
    ("topup", ("u1", "GOLD_COINS", 1), {"description": 5}, TypeError, "description must be a str, got int"),
    ("topup", ("u1", "GOLD_COINS", 1), {"metadata": [1]}, TypeError, "metadata must be a mapping"),
    (
        "topup",
        ("u1", "GOLD_COINS", 1),
        {"metadata": {"at": NOW}},
        TypeError,
        "metadata must hold JSON values only: Object of type datetime",
    ),
    (
        "spend",
        ("u1", "GOLD_COINS", 1),
        {"metadata": {"x": float("nan")}},
        ValueError,
        "metadata must hold JSON values only",
    ),
    ("topup", ("u1", "GOLD_COINS", 1), {"idempotency_key": 12}, TypeError, "idempotency_key must be a str"),
    (
        "topup",
        ("u1", "GOLD_COINS", 1),
        {"idempotency_key": ""},
        ValueError,
        "idempotency_key must not be empty",
    ),
    ("spend", ("u1", "GOLD_COINS", None), {}, TypeError, "amount must be an int (minor units), got NoneType"),
    (
        "bonus",
        ("u1", "GOLD_COINS", 1),
        {"expires_at": "2026-12-31"},
        TypeError,
        "expires_at must be a datetime, got str",
    ),
    (
        "bonus",
        ("u1", "GOLD_COINS", 1),
        {"expires_in_seconds": 1.5},
        TypeError,
        "expires_in_seconds must be an int (seconds)",
    ),
    ("get_balances", (None,), {}, TypeError, "user_id must be a str, got NoneType"),
    ("get_balances", ("u1",), {"as_of": "yesterday"}, TypeError, "as_of must be a datetime, got str"),
    ("get_balances", ("u1",), {"as_of": 1767225600}, TypeError, "as_of must be a datetime, got int"),
    (
        "get_balances",
        ("u1",),
        {"asset_type": ["GOLD_COINS"]},
        TypeError,
        "asset_type must be a str, got list",
    ),
    ("get_balances", ("",), {}, ValueError, "user_id must not be empty"),
    ("get_history", ("u1",), {"limit": "10"}, TypeError, "limit must be an int (items per page), got str"),
    ("get_history", ("u1",), {"cursor": 5}, TypeError, "cursor must be a str, got int"),
    (
        "get_history",
        ("u1",),
        {"from_time": date(2026, 1, 1)},
        TypeError,
        "from_time must be a datetime, got date",
    ),
    (
        "get_history",
        ("u1",),
        {"to_time": datetime(2026, 1, 1)},
        ValueError,
        "to_time must be an aware datetime",
    ),
    ("get_history", ("u1",), {"type": 3}, TypeError, "type must be a str, got int"),
    ("get_transaction", (uuid.UUID(int=1),), {}, TypeError, "transaction_id must be a str, got UUID"),
    ("reverse", ("t1",), {"allow_negative": "yes"}, TypeError, "allow_negative must be a bool, got str"),
    ("reverse", ("t1",), {"amount": "5"}, TypeError, "amount must be an int (minor units), got str"),
    ("reverse", ("t1",), {"reason": 1}, TypeError, "reason must be a str, got int"),
    (
        "transfer",
        ("a", "b", "GOLD_COINS", 1),
        {"fee": 1.5},
        TypeError,
        "fee must be an int (minor units), got float",
    ),
    ("transfer", ("a", 2, "GOLD_COINS", 1), {}, TypeError, "to_user_id must be a str, got int"),
    ("batch", (OP,), {}, TypeError, "operations must be a sequence of BatchOperation, got BatchOperation"),
    ("batch", ([{"type": "topup"}],), {}, TypeError, "each of operations must be a BatchOperation, got dict"),
    ("batch", ([BatchOperation.topup("u1", "GOLD_COINS", "5")],), {}, TypeError, "amount must be an int"),  # type: ignore[arg-type]
    (
        "place_hold",
        ("u1", "GOLD_COINS", 5),
        {"expires_in_seconds": "60"},
        TypeError,
        "expires_in_seconds must be an int (seconds), got str",
    ),
    ("capture_hold", (5,), {}, TypeError, "hold_id must be a str, got int"),
    ("void_hold", ("h1",), {"idempotency_key": b"k"}, TypeError, "idempotency_key must be a str, got bytes"),
    ("get_hold", (None,), {}, TypeError, "hold_id must be a str, got NoneType"),
    ("list_holds", ("u1",), {"status": 1}, TypeError, "status must be a str, got int"),
    ("list_holds", ("u1",), {"status": "closed"}, ValueError, "status must be 'open' or 'all'"),
    ("list_users", (), {"limit": 2.0}, TypeError, "limit must be an int (items per page), got float"),
    ("create_user", ("u1", 42), {}, TypeError, "name must be a str, got int"),
]

ITERATORS: list[tuple[str, tuple[Any, ...], dict[str, Any], str]] = [
    ("iter_users", (), {"page_size": "50"}, "page_size must be an int (items per page), got str"),
    ("iter_history", ("u1",), {"page_size": 2.5}, "page_size must be an int (items per page), got float"),
    ("iter_holds", ("u1",), {"page_size": "9"}, "page_size must be an int (items per page), got str"),
]


def _nothing_sent(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"nothing may be sent, got {request.method} {request.url}")


@pytest.mark.parametrize(("method", "args", "kwargs", "exc", "message"), CASES)
async def test_a_wrong_argument_is_named_before_anything_is_sent(method, args, kwargs, exc, message):
    sync = WalletClient("http://wallet.test", "wk", transport=httpx.MockTransport(_nothing_sent))
    with pytest.raises(exc, match=re.escape(message)):
        getattr(sync, method)(*args, **kwargs)
    sync.close()
    async with AsyncWalletClient(
        "http://wallet.test", "wk", transport=httpx.MockTransport(_nothing_sent)
    ) as client:
        with pytest.raises(exc, match=re.escape(message)):
            await getattr(client, method)(*args, **kwargs)


@pytest.mark.parametrize(("method", "args", "kwargs", "message"), ITERATORS)
async def test_a_wrong_page_size_is_named(method, args, kwargs, message):
    sync = WalletClient("http://wallet.test", "wk", transport=httpx.MockTransport(_nothing_sent))
    with pytest.raises(TypeError, match=re.escape(message)):
        next(getattr(sync, method)(*args, **kwargs))
    sync.close()
    async with AsyncWalletClient(
        "http://wallet.test", "wk", transport=httpx.MockTransport(_nothing_sent)
    ) as client:
        with pytest.raises(TypeError, match=re.escape(message)):
            await anext(getattr(client, method)(*args, **kwargs))


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"base_url": 8000}, TypeError, "base_url must be a str"),
        ({"base_url": None}, TypeError, "base_url must be a str"),
        ({"base_url": "127.0.0.1:8000"}, ValueError, "base_url must start with http:// or https://"),
        ({"base_url": "ftp://wallet.test"}, ValueError, "base_url must start with http:// or https://"),
        ({"api_key": 123}, TypeError, "api_key must be a str, got int"),
        ({"api_key": ""}, ValueError, "api_key must not be empty"),
        ({"timeout": "10"}, TypeError, "timeout must be a number of seconds (int or float), got str"),
        ({"timeout": None}, TypeError, "timeout must be a number of seconds (int or float), got NoneType"),
        ({"timeout": True}, TypeError, "timeout must be a number of seconds (int or float), got bool"),
        ({"timeout": 0}, ValueError, "timeout must be a positive, finite number of seconds"),
        ({"timeout": float("inf")}, ValueError, "timeout must be a positive, finite number of seconds"),
        ({"retry": 3}, TypeError, "retry must be a RetryPolicy or None, got int"),
        ({"headers": ["X-A: b"]}, TypeError, "headers must be a mapping"),
        ({"rng": 42}, TypeError, "rng must be a random.Random or None, got int"),
        ({"transport": object()}, TypeError, "transport must be an httpx."),
    ],
)
def test_the_constructors_name_a_wrong_argument(kwargs, exc, message):
    for client_class in (WalletClient, AsyncWalletClient):
        arguments = {"base_url": "http://wallet.test"} | kwargs
        with pytest.raises(exc, match=re.escape(message)):
            client_class(**arguments)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": "3"}, "max_attempts must be an int, got str"),
        ({"total_timeout": "30"}, "total_timeout must be a number of seconds (int or float), got str"),
        ({"backoff_base": None}, "backoff_base must be a number of seconds (int or float), got NoneType"),
        ({"retry_statuses": [503]}, "retry_statuses must be a frozenset of int statuses, got list"),
        ({"retry_statuses": frozenset({"503"})}, "retry_statuses must be a frozenset of int statuses"),
        ({"retry_in_use": "no"}, "retry_in_use must be a bool, got str"),
    ],
)
def test_retry_policy_names_a_wrong_argument(kwargs, message):
    with pytest.raises(TypeError, match=re.escape(message)):
        RetryPolicy(**kwargs)


def test_right_arguments_still_pass():
    """The checks take what the signatures promise (ints, aware datetimes, mappings, None)."""
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(503)

    client = WalletClient(
        "http://wallet.test",
        "wk",
        transport=httpx.MockTransport(record),
        retry=RetryPolicy.never(),
        timeout=1,
    )
    for call in (
        lambda: client.bonus("u1", "GOLD_COINS", 1, metadata={"a": 1}, expires_at=NOW, description=None),
        lambda: client.get_history("u1", limit=5, from_time=NOW, to_time=NOW, cursor="c"),
        lambda: client.batch((OP, OP)),
        lambda: client.reverse("t1", amount=1, allow_negative=True),
    ):
        with pytest.raises(ServiceUnavailable):  # sent, and answered
            call()
    assert len(sent) == 4
    client.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_create_user_sends_the_name_in_nfc(kind):
    import json
    import unicodedata

    sent: list[dict[str, Any]] = []

    def record(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sent.append(body)
        return httpx.Response(201, json=body | {"created_at": "2026-01-01T00:00:00.000000Z"})

    decomposed = unicodedata.normalize("NFD", "Zoë")
    if kind == "sync":
        with WalletClient("http://wallet.test", "wk", transport=httpx.MockTransport(record)) as client:
            user = client.create_user("u1", decomposed)
    else:
        async with AsyncWalletClient(
            "http://wallet.test", "wk", transport=httpx.MockTransport(record)
        ) as aclient:
            user = await aclient.create_user("u1", decomposed)
    assert sent[0]["name"] == "Zoë" == user.name and len(user.name) == 3
