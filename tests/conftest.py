"""Test fixtures: a fresh, migrated PostgreSQL database per test session, and the real ASGI app.

WALLET_TEST_DATABASE_URL names a server to create the test database on (any database URL on it
works; the tests create and drop their own). Unset, the embedded PostgreSQL starts in a temporary
folder. Nothing is mocked: every test talks to PostgreSQL.
"""

from __future__ import annotations

import asyncio
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

from tests.support import bearer, verify_books
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

    # Each DROP DATABASE waits for a checkpoint (PostgreSQL 15); dropped together, they share a
    # few instead of waiting for one each (a minute for the suite's databases on a busy server).
    async def drop(name: str) -> None:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    for start in range(0, len(created), 8):  # a few connections at a time: the server is shared
        await asyncio.gather(*(drop(name) for name in created[start : start + 8]))


@pytest.fixture(scope="session")
async def migrated_template(create_database: Callable[..., Awaitable[str]]) -> str:
    """The name of a database migrated to head once per session (per worker with xdist), which
    `create_migrated_database` clones: a copy takes a tenth of the time of running the migrations."""
    url = await create_database()
    await upgrade_to_head_async(url)
    return urlsplit(url).path.lstrip("/")


@pytest.fixture(scope="session")
async def create_migrated_database(
    create_database: Callable[..., Awaitable[str]], migrated_template: str
) -> Callable[[], Awaitable[str]]:
    """Creates a fresh database migrated to head (a copy of `migrated_template`); returns its URL."""

    async def create() -> str:
        return await create_database(template=migrated_template)

    return create


@pytest.fixture(scope="session")
async def database_url(create_migrated_database: Callable[[], Awaitable[str]]) -> AsyncIterator[str]:
    url = await create_migrated_database()
    conn = await asyncpg.connect(url)
    try:
        await seed_reference_data(conn)
    finally:
        await conn.close()
    yield url
    # After every test of this process: with pytest-xdist each worker has a database of its own,
    # and the whole-suite audit (test_verify_is_clean_after_the_whole_suite) runs in one of them;
    # here every worker's books are checked after its last test.
    report = await verify_books(url)
    assert report.clean, report.render()


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        db_pool_min_size=2,
        # Workers share the server's max_connections (100 by default): at most 16 connections per
        # worker's app (4 workers at 24 had reached the limit), closed 1 s after a burst.
        db_pool_max_size=16,
        db_pool_idle_timeout_ms=1_000,
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
    config.addinivalue_line(
        "markers",
        "slow: the slow tier, tens of seconds each (schemathesis's full phases, the bank test, the"
        " browser, the benchmark end to end, the hypothesis model): `make test-slow` runs it, after"
        " `make test` (everything else) in CI",
    )


# Modules whose tests open dozens of connections at once (races of many requests, several pools
# or processes on one database). With pytest-xdist (`--dist loadgroup`) they share one worker, so
# no two of them run at once and the suite stays within the server's max_connections.
CONNECTION_HEAVY = {
    "tests/api/test_rate_limits.py",
    "tests/services/test_audit.py",
    "tests/services/test_balance_reads.py",
    "tests/services/test_ledger_operations_concurrency.py",
    "tests/services/test_ledger_operations_races.py",
    "tests/services/test_lots.py",
    "tests/services/test_posting_concurrency.py",
}

# Tests sharing a fixture made once per worker that needs it (a served process, a built site):
# other tests are spread one by one, so without a group of their own each worker running one of
# them would start or build it again.
SHARED_PER_WORKER = {
    "tests/client/": "client_service",  # tests/client/conftest.py's service (and test_crash.py's)
    "tests/test_docs_site.py": "docs_site",  # mkdocs build, about 3 s of CPU
    "tests/test_serving.py": "serving",  # the service the non-destructive tests share
}


def _xdist_group(path: str) -> str | None:
    if path in CONNECTION_HEAVY:
        return "connection_heavy"
    return next((group for prefix, group in SHARED_PER_WORKER.items() if path.startswith(prefix)), None)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow tests first, so that with pytest-xdist the longest start at once and the short ones
    fill the other workers around them; whole-suite audits last."""

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("last") is not None:
            return 2
        return 0 if item.get_closest_marker("slow") is not None else 1

    items.sort(key=rank)
    for item in items:
        group = _xdist_group(Path(item.path).relative_to(config.rootpath).as_posix())
        if item.get_closest_marker("last") is not None:
            # After the connection-heavy modules, on the database they post hundreds of
            # transactions to: elsewhere it may be a worker that ran little else (the groups
            # take a worker each), and there would be nothing to audit.
            group = "connection_heavy"
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """On a pytest-xdist worker under `--dist loadgroup`, a grouped test's id names its group (that
    is how the scheduler sees groups): with pytest 9.2, pytest-xdist 3.8 silently ignored every
    group (pytest-xdist #1386) and the connection-heavy modules ran at once on every worker."""
    grouped = item.get_closest_marker("xdist_group") is not None
    if grouped and getattr(item.config.option, "loadgroup", False) and "@" not in item.nodeid:
        pytest.fail(f"--dist loadgroup did not group {item.nodeid} (pytest-xdist #1386)", pytrace=False)
