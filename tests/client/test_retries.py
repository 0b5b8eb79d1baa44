"""Retries against the real service: a real 503 (the account's row lock held past the service's
lock timeout), a real client timeout, a connection refused before sending and a connection lost
after the server did the work. Every attempt of a call carries the same idempotency key, and the
ledger holds exactly one transaction for it, its amount applied once."""

from __future__ import annotations

import asyncio

import pytest

from tests.client.conftest import (
    ApiFactory,
    RowLock,
    Service,
    balance_in_db,
    ensure_user,
    transactions_with_key,
    wait_for,
)
from wallet_client import RetryPolicy, ServiceUnavailable, WalletConnectionError
from wallet_client._core import RETRYABLE_TRANSPORT_ERRORS


async def _assert_applied_once(db, user: str, key: str, amount: int, transaction_id: str) -> None:
    rows = await transactions_with_key(db, key)
    assert [(r["id"], r["amount_minor"]) for r in rows] == [(transaction_id, amount)]
    assert await balance_in_db(db, user) == amount


async def test_a_real_503_is_retried_with_the_same_key(
    api_factory: ApiFactory, service: Service, db, new_user_id
):
    api = api_factory()
    user = new_user_id()
    await ensure_user(db, user)
    async with RowLock(service.database_url, user) as lock:
        call = asyncio.ensure_future(api("topup", user, "GOLD_COINS", 250))
        await wait_for(lambda: 503 in api.transport.outcomes)  # the first attempt timed out on the lock
        await lock.release()
        transaction = await call
    outcomes = api.transport.outcomes
    assert outcomes[0] == 503 and outcomes[-1] == 201 and set(outcomes) <= {503, 201}, outcomes
    keys = api.transport.keys()
    assert len(set(keys)) == 1 and keys[0] == transaction.idempotency_key
    assert transaction.replayed is False  # the 503 wrote nothing
    await _assert_applied_once(db, user, transaction.idempotency_key, 250, transaction.id)


async def test_503_after_every_attempt_raises_service_unavailable(
    api_factory: ApiFactory, service: Service, db, new_user_id
):
    api = api_factory(retry=RetryPolicy(max_attempts=2, backoff_base=0.01, retry_after_max=0.01))
    user = new_user_id()
    await ensure_user(db, user)
    async with RowLock(service.database_url, user):
        with pytest.raises(ServiceUnavailable) as info:
            await api("spend", user, "GOLD_COINS", 1)
    error = info.value
    assert (error.status, error.code, error.attempts, error.retry_after) == (503, "busy", 2, 1.0)
    assert api.transport.outcomes == [503, 503] and len(set(api.transport.keys())) == 1
    assert await transactions_with_key(db, error.idempotency_key) == []


async def test_a_client_timeout_is_retried_with_the_same_key(
    api_factory: ApiFactory, service: Service, db, new_user_id
):
    api = api_factory(timeout=0.2)
    user = new_user_id()
    await ensure_user(db, user)
    async with RowLock(service.database_url, user) as lock:
        call = asyncio.ensure_future(api("topup", user, "GOLD_COINS", 70, idempotency_key=f"slow-{user}"))
        await wait_for(lambda: "ReadTimeout" in api.transport.outcomes)
        await lock.release()
        transaction = await call
    assert api.transport.outcomes[0] == "ReadTimeout" and api.transport.outcomes[-1] == 201
    assert set(api.transport.keys()) == {f"slow-{user}"}
    # Whichever attempt the server completed (the timed-out one, still waiting on the lock when it
    # was released, or a later one), the ledger holds one transaction and the balance moved once.
    await _assert_applied_once(db, user, f"slow-{user}", 70, transaction.id)


async def test_a_connection_lost_after_the_server_applied_the_write_is_replayed(
    api_factory: ApiFactory, db, new_user_id
):
    api = api_factory(faults=["lost"])
    user = new_user_id()
    await ensure_user(db, user)
    transaction = await api("topup", user, "GOLD_COINS", 40)
    assert api.transport.outcomes == ["lost 201", 201]
    keys = api.transport.keys()
    assert keys[0] == keys[1] == transaction.idempotency_key
    assert transaction.replayed is True  # the answer came from the first attempt's stored outcome
    await _assert_applied_once(db, user, transaction.idempotency_key, 40, transaction.id)


async def test_a_refused_connection_is_retried_and_applies_once(api_factory: ApiFactory, db, new_user_id):
    api = api_factory(faults=["connect", "connect"])
    user = new_user_id()
    await ensure_user(db, user)
    transaction = await api("bonus", user, "GOLD_COINS", 15)
    assert api.transport.outcomes == ["ConnectError", "ConnectError", 201]
    assert len(set(api.transport.keys())) == 1 and transaction.replayed is False
    await _assert_applied_once(db, user, transaction.idempotency_key, 15, transaction.id)


async def test_no_service_at_all_raises_connection_error_with_the_key(kind, new_user_id):
    from tools.service_process import free_port

    from tests.client.conftest import make_api

    api = make_api(
        kind,
        f"http://127.0.0.1:{free_port()}",
        "wk_x",
        retry=RetryPolicy(max_attempts=3, backoff_base=0.01),
    )
    try:
        with pytest.raises(WalletConnectionError) as info:
            await api("topup", new_user_id(), "GOLD_COINS", 1, idempotency_key="try-later-1")
    finally:
        for close in api.closers:
            await close()
    assert (info.value.attempts, info.value.idempotency_key) == (3, "try-later-1")
    assert isinstance(info.value.__cause__, RETRYABLE_TRANSPORT_ERRORS)
    assert api.transport.count == 3 and set(api.transport.keys()) == {"try-later-1"}
