"""The crash test: a write whose server is SIGKILLed while the request is being processed.

The test holds the user's account row lock, so the service's spend is certainly in flight (its
database backend waits on that lock) when `wallet serve` is SIGKILLed. The client sees the
connection drop, keeps retrying (connection refused) while the service is down, and gets its
answer once the service is started again on the same port. Meanwhile the orphaned database
backend either goes on and commits the spend (the server died, its work did not) or is
terminated (its work is lost). Either way the ledger must show exactly one transaction for the
key and the balance must move once: a replay in the first case, a first execution in the second.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from tools.service_process import ServiceProcess

from tests.client.conftest import (
    SERVICE_ENV,
    RowLock,
    Service,
    balance_in_db,
    ensure_user,
    make_api,
    transactions_with_key,
    wait_for,
)
from wallet_client import RetryPolicy

# Retries that outlast a restart of the service (about a second here).
CRASH_RETRY = RetryPolicy(max_attempts=200, total_timeout=45, backoff_base=0.05, backoff_max=0.25)


@pytest.fixture(scope="module")
async def crash_service(service: Service, tmp_path_factory: Any) -> AsyncIterator[Service]:
    """A second service on the same database, to kill at will; long database timeouts, so the
    killed request's backend is still waiting on the test's lock when the test releases it."""
    env = {
        **SERVICE_ENV,
        "WALLET_DATABASE_URL": service.database_url,
        "WALLET_DB_LOCK_TIMEOUT_MS": "20000",
        "WALLET_DB_STATEMENT_TIMEOUT_MS": "20000",
    }
    log_path = Path(tmp_path_factory.mktemp("client-crash")) / "wallet.log"
    process = ServiceProcess(env, log_path=log_path)
    await asyncio.to_thread(process.start)
    try:
        yield Service(process, service.database_url, service.keys)
    finally:
        await asyncio.to_thread(process.stop)


@pytest.mark.parametrize("orphan", ["commits", "is_terminated"])
async def test_a_write_whose_server_is_killed_mid_request_applies_exactly_once(
    kind: str, orphan: str, crash_service: Service, db, new_user_id: Callable[[], str]
):
    api = make_api(kind, crash_service.base_url, crash_service.keys["admin"], retry=CRASH_RETRY)
    user = new_user_id()
    await ensure_user(db, user)
    key = f"crash-{uuid.uuid4()}"
    try:
        await api("topup", user, "GOLD_COINS", 1000)
        async with RowLock(crash_service.database_url, user) as lock:
            call: asyncio.Future[Any] = asyncio.ensure_future(
                api("spend", user, "GOLD_COINS", 300, idempotency_key=key)
            )

            async def in_flight() -> bool:
                return bool(await lock.waiters())

            await wait_for(in_flight)  # the spend is inside the service, waiting on our lock
            orphans = await lock.waiters()
            await asyncio.to_thread(crash_service.process.kill)
            # The client lost the connection and is retrying against the dead port.
            await wait_for(lambda: "ConnectError" in api.transport.outcomes)
            assert not call.done()
            if orphan == "is_terminated":
                assert lock.conn is not None
                for pid in orphans:
                    await lock.conn.execute("SELECT pg_terminate_backend($1)", pid)

                async def gone() -> bool:
                    alive = await db.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", orphans
                    )
                    return bool(alive == 0)

                await wait_for(gone)
            await lock.release()  # an orphan still alive now takes the lock and commits
        if orphan == "commits":
            await wait_for(lambda: _count(db, key, 1))
        await asyncio.to_thread(crash_service.process.start)  # same port
        transaction = await asyncio.wait_for(call, timeout=40)
    finally:
        if "call" in locals() and not call.done():
            # Never leave the call (a worker thread, for the sync client) behind.
            await asyncio.wait([call], timeout=60)
        for close in api.closers:
            await close()

    outcomes = api.transport.outcomes
    assert outcomes[1] in ("RemoteProtocolError", "ReadError"), outcomes  # [0] is the top-up
    assert outcomes[-1] == 201 and "ConnectError" in outcomes
    assert set(api.transport.keys()[1:]) == {key}  # every attempt of the spend: one key
    # The orphan's commit is replayed; without it the retry is the first execution.
    assert transaction.replayed is (orphan == "commits")
    rows = await transactions_with_key(db, key)
    assert [(r["id"], r["type"], r["amount_minor"]) for r in rows] == [(transaction.id, "spend", 300)]
    assert transaction.balance_after == 700
    assert await balance_in_db(db, user) == 700


def _count(db, key: str, expected: int) -> Awaitable[bool]:
    async def check() -> bool:
        return len(await transactions_with_key(db, key)) == expected

    return check()
