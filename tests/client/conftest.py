"""Fixtures for the client tests: a real `wallet serve` child process on a fresh database, and the
sync and async clients of `wallet_client` pointed at it, behind a transport that records every
request (and can inject transport faults), so the tests can count attempts and read the
idempotency key each one carried.

Nothing is mocked on the service side: the tests check what the ledger holds through SQL.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from tools.service_process import ServiceProcess

from wallet.services.api_keys import create_api_key
from wallet.services.seed import seed_reference_data
from wallet_client import AsyncWalletClient, RetryPolicy, WalletClient

# Short lock timeout, so a row lock the test holds turns a write into a real 503 quickly.
# One connection kept when idle, and a burst's closed a second after it: with pytest-xdist each
# worker runs a service of its own, and the server's max_connections is shared by all.
SERVICE_ENV = {
    "WALLET_LOG_LEVEL": "WARNING",
    "WALLET_DB_LOCK_TIMEOUT_MS": "500",
    "WALLET_DB_POOL_MIN_SIZE": "1",
    "WALLET_DB_POOL_IDLE_TIMEOUT_MS": "1000",
}
# Fast retries for the tests (the service answers 503 with Retry-After: 1).
TEST_RETRY = RetryPolicy(
    max_attempts=6, total_timeout=20, backoff_base=0.02, backoff_max=0.2, retry_after_max=0.1
)


@dataclass
class Service:
    process: ServiceProcess
    database_url: str
    keys: dict[str, str]

    @property
    def base_url(self) -> str:
        return self.process.base_url


async def prepare_database(
    create_migrated_database: Callable[[], Awaitable[str]],
) -> tuple[str, dict[str, str]]:
    """A fresh database, migrated and seeded, with an API key per role the tests need."""
    url = await create_migrated_database()
    conn = await asyncpg.connect(url)
    try:
        await seed_reference_data(conn)
        keys = {
            "admin": await create_api_key(conn, "client-admin", ["admin"]),
            "read": await create_api_key(conn, "client-read", ["read"]),
        }
    finally:
        await conn.close()
    return url, keys


@pytest.fixture(scope="session")
async def service(
    create_migrated_database: Callable[[], Awaitable[str]], tmp_path_factory: Any
) -> AsyncIterator[Service]:
    url, keys = await prepare_database(create_migrated_database)
    log_path = Path(tmp_path_factory.mktemp("client-service")) / "wallet.log"
    process = ServiceProcess({"WALLET_DATABASE_URL": url, **SERVICE_ENV}, log_path=log_path)
    await asyncio.to_thread(process.start)
    try:
        yield Service(process, url, keys)
    finally:
        await asyncio.to_thread(process.stop)


@pytest.fixture(scope="session")
async def db(service: Service) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(service.database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


class Recorder:
    """Wraps the real HTTP transport: records each request and its outcome, and injects faults.

    `faults` is consumed one per request: "connect" fails before anything is sent (as a refused
    connection), "lost" sends the request and lets the server answer, then drops the answer (as a
    connection reset after the server did its work); None passes the request through."""

    def __init__(self, faults: list[str | None] | None = None) -> None:
        self.faults = list(faults or [])
        self.requests: list[httpx.Request] = []
        self.outcomes: list[int | str] = []

    @property
    def count(self) -> int:
        return len(self.requests)

    def keys(self) -> list[str | None]:
        return [r.headers.get("Idempotency-Key") for r in self.requests]

    def _before(self, request: httpx.Request) -> str | None:
        self.requests.append(request)
        fault = self.faults.pop(0) if self.faults else None
        if fault == "connect":
            self.outcomes.append("ConnectError")
            raise httpx.ConnectError("injected: connection refused", request=request)
        return fault

    def _after(self, request: httpx.Request, response: httpx.Response, fault: str | None) -> httpx.Response:
        if fault == "lost":
            self.outcomes.append(f"lost {response.status_code}")
            raise httpx.ReadError("injected: connection lost after the server answered", request=request)
        self.outcomes.append(response.status_code)
        return response

    def _failed(self, exc: Exception) -> None:
        self.outcomes.append(type(exc).__name__)


class SyncRecorder(Recorder, httpx.BaseTransport):
    def __init__(self, faults: list[str | None] | None = None) -> None:
        super().__init__(faults)
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        fault = self._before(request)
        try:
            response = self.inner.handle_request(request)
            response.read()
        except httpx.TransportError as exc:
            self._failed(exc)
            raise
        return self._after(request, response, fault)

    def close(self) -> None:
        self.inner.close()


class AsyncRecorder(Recorder, httpx.AsyncBaseTransport):
    def __init__(self, faults: list[str | None] | None = None) -> None:
        super().__init__(faults)
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        fault = self._before(request)
        try:
            response = await self.inner.handle_async_request(request)
            await response.aread()
        except httpx.TransportError as exc:
            self._failed(exc)
            raise
        except asyncio.CancelledError:  # the attempt's timeout ran out while the transport waited
            self.outcomes.append("ReadTimeout")
            raise
        return self._after(request, response, fault)

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Api:
    """Calls a method of either client the same way from an async test: the async client is
    awaited, the sync one runs in a worker thread (so the test's event loop stays free to hold
    database locks or kill the service meanwhile)."""

    kind: str
    client: WalletClient | AsyncWalletClient
    transport: Recorder
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        bound = getattr(self.client, method)
        if self.kind == "async":
            return await bound(*args, **kwargs)
        return await asyncio.to_thread(bound, *args, **kwargs)

    async def collect(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """All items of an `iter_*` method."""
        bound = getattr(self.client, method)
        if self.kind == "async":
            return [item async for item in bound(*args, **kwargs)]
        return await asyncio.to_thread(lambda: list(bound(*args, **kwargs)))


ApiFactory = Callable[..., Api]


def make_api(
    kind: str,
    base_url: str,
    api_key: str | None,
    *,
    retry: RetryPolicy = TEST_RETRY,
    timeout: float = 10.0,
    faults: list[str | None] | None = None,
) -> Api:
    if kind == "async":
        async_transport = AsyncRecorder(faults)
        async_client = AsyncWalletClient(
            base_url, api_key, retry=retry, timeout=timeout, transport=async_transport
        )
        return Api(kind, async_client, async_transport, [async_client.aclose])
    sync_transport = SyncRecorder(faults)
    sync_client = WalletClient(base_url, api_key, retry=retry, timeout=timeout, transport=sync_transport)

    async def close() -> None:
        sync_client.close()

    return Api(kind, sync_client, sync_transport, [close])


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def api_factory(service: Service, kind: str) -> AsyncIterator[ApiFactory]:
    """`api_factory(key="admin", retry=..., timeout=..., faults=[...])`: a client of the kind
    under test (sync or async) against the session's service."""
    made: list[Api] = []

    def factory(key: str | None = "admin", **options: Any) -> Api:
        api = make_api(kind, service.base_url, service.keys.get(key or "", key), **options)
        made.append(api)
        return api

    yield factory
    for api in made:
        for close in api.closers:
            await close()


@pytest.fixture
async def api(api_factory: ApiFactory) -> Api:
    return api_factory()


@pytest.fixture
def new_user_id() -> Callable[[], str]:
    return lambda: f"c_{uuid.uuid4().hex[:12]}"


async def ensure_user(db: asyncpg.Pool, user_id: str) -> None:
    await db.execute("SELECT wallet_ensure_user($1, 'Client test')", user_id)


async def transactions_with_key(db: asyncpg.Pool, key: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT id::text, type, amount_minor FROM transactions WHERE idempotency_key = $1", key
    )


async def balance_in_db(db: asyncpg.Pool, user_id: str, asset: str = "GOLD_COINS") -> int:
    value = await db.fetchval(
        "SELECT balance_minor FROM accounts WHERE user_id = $1 AND asset_code = $2", user_id, asset
    )
    return int(value or 0)


class RowLock:
    """Holds the row lock of a user's account from a separate connection, as a long write
    would: the service's writes to that account wait on it (and time out with 503)."""

    def __init__(self, database_url: str, user_id: str, asset: str = "GOLD_COINS") -> None:
        self.database_url = database_url
        self.user_id = user_id
        self.asset = asset
        self.conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> RowLock:
        self.conn = await asyncpg.connect(self.database_url)
        await self.conn.execute("BEGIN")
        locked = await self.conn.fetchval(
            "SELECT id FROM accounts WHERE user_id = $1 AND asset_code = $2 FOR UPDATE",
            self.user_id,
            self.asset,
        )
        assert locked is not None
        return self

    async def release(self) -> None:
        if self.conn is not None and not self.conn.is_closed():
            await self.conn.execute("ROLLBACK")
            await self.conn.close()

    async def __aexit__(self, *exc: object) -> None:
        await self.release()

    async def waiters(self) -> list[int]:
        """Backends of this database waiting for a lock (the service's write, queued behind us)."""
        assert self.conn is not None
        # Activity is read from a snapshot kept for the whole transaction unless cleared.
        await self.conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = await self.conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return [r["pid"] for r in rows]


async def wait_for(predicate: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
