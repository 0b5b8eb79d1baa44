"""Test fixtures: a fresh, migrated PostgreSQL database per test session, and the real ASGI app.

WALLET_TEST_DATABASE_URL names a server to create the test database on (any database URL on it
works; the tests create and drop their own). Unset, the embedded PostgreSQL starts in a temporary
folder. Nothing is mocked: every test talks to PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from tests.support import bearer
from wallet.api.app import create_app
from wallet.db.migrate import upgrade_to_head_async
from wallet.services.api_keys import create_api_key
from wallet.services.lots import sync_policies
from wallet.services.seed import seed_reference_data
from wallet.settings import LotPolicy, Settings


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    url = os.environ.get("WALLET_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from wallet.embedded import embedded_postgres

    data_dir = Path(tempfile.mkdtemp(prefix="wallet-test-pg-"))
    os.chmod(data_dir, 0o755)
    with embedded_postgres(data_dir) as embedded_url:
        yield embedded_url
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
async def create_database(server_url: str) -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """Creates empty databases on the test server; drops them all at the end."""
    created: list[str] = []

    async def create(template: str = "template0") -> str:
        name = f"wallet_test_{uuid.uuid4().hex[:12]}"
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        finally:
            await admin.close()
        created.append(name)
        return with_database(server_url, name)

    yield create
    admin = await asyncpg.connect(server_url)
    try:
        for name in created:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
async def database_url(create_database: Callable[..., Awaitable[str]]) -> str:
    url = await create_database()
    await upgrade_to_head_async(url)
    conn = await asyncpg.connect(url)
    try:
        await seed_reference_data(conn)
    finally:
        await conn.close()
    return url


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        db_pool_min_size=2,
        db_pool_max_size=24,
        hold_sweep_interval_ms=0,
        lot_expiry_interval_ms=0,  # tests expire lots themselves
        audit_interval_ms=0,  # and audit when they mean to
        audit_settle_ms=0,
        auth_cache_ttl_ms=0,
        key_usage_flush_ms=0,  # tests flush key usage themselves
    )


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[Any]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
async def pool(app: Any) -> asyncpg.Pool:
    return app.state.resources.pool


@pytest.fixture(scope="session")
async def keys(pool: asyncpg.Pool) -> dict[str, str]:
    """One API key per scope combination the tests need."""
    async with pool.acquire() as conn:
        return {
            "admin": await create_api_key(conn, "test-admin", ["admin"]),
            "all": await create_api_key(conn, "test-all", ["read", "credit", "spend"]),
            "read": await create_api_key(conn, "test-read", ["read"]),
            "credit": await create_api_key(conn, "test-credit", ["credit"]),
            "spend": await create_api_key(conn, "test-spend", ["spend"]),
            "reverse": await create_api_key(conn, "test-reverse", ["reverse", "read"]),
            "transfer": await create_api_key(conn, "test-transfer", ["transfer", "read"]),
        }


def _http_client(app: Any, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://wallet.test", headers=bearer(key), timeout=60
    )


@pytest.fixture(scope="session")
async def client(app: Any, keys: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """Through the real ASGI app, authenticated with read, credit and spend scopes."""
    async with _http_client(app, keys["all"]) as http:
        yield http


@pytest.fixture(scope="session")
async def admin(app: Any, keys: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with _http_client(app, keys["admin"]) as http:
        yield http


@pytest.fixture
async def make_user(admin: httpx.AsyncClient) -> Callable[..., Awaitable[str]]:
    """Creates a fresh user through the API, optionally with opening balances (as top-ups)."""

    async def make(**balances: int) -> str:
        user_id = f"u_{uuid.uuid4().hex[:12]}"
        response = await admin.post("/api/v1/users", json={"user_id": user_id, "name": "Test User"})
        assert response.status_code == 201, response.text
        for asset_code, amount in balances.items():
            response = await admin.post(
                "/api/v1/transactions/topup",
                json={"user_id": user_id, "asset_type": asset_code, "amount": amount},
                headers={"Idempotency-Key": f"open-{user_id}-{asset_code}"},
            )
            assert response.status_code == 201, response.text
        return user_id

    return make


@pytest.fixture
async def lot_asset(pool, settings) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """A fresh asset with the lot policy given; the configured policies are restored after."""

    async def make(**policy: Any) -> str:
        code = "LT_" + uuid.uuid4().hex[:12].upper()
        await pool.execute("SELECT wallet_ensure_asset($1, 'Lots test', 0::smallint)", code)
        policies = {**settings.lot_policies, code: LotPolicy(**policy)}
        await sync_policies(pool, settings.model_copy(update={"lot_policies": policies}))
        return code

    yield make
    await sync_policies(pool, settings)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "last: run after every other test (whole-suite audits)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)
