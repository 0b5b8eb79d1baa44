"""High availability without the cluster: the service and every command with a multi-host URL,
behind pgbouncer in transaction mode, and through a connection that is lost mid-request.

The multi-host URL is the test server listed after a dead host, `127.0.0.1:1,<server>` with
`target_session_attrs=read-write`, so each connection has to skip the first host as it would skip
a failed primary. pgbouncer is Debian's (`make cluster-deps`); its test skips, saying so, only
where it is not installed. The cluster itself is `make failover-test`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from tools.service_process import ServiceProcess, free_port

from tests.support import bearer, waiting_on, wallet_on
from wallet.api.app import create_app
from wallet.db.pool import role_settings_sql
from wallet.services.api_keys import create_api_key
from wallet.services.rate_limits import redis_key_prefix
from wallet.settings import Settings


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if not parts.hostname or parts.hostname.startswith("/"):
        pytest.skip("the test server is reached through a Unix socket (embedded); these tests need TCP")
    return parts.hostname, parts.port or 5432


def _user(url: str) -> str:
    return urlsplit(url).username or "postgres"


def multi_host(url: str) -> str:
    """The same database, after a host that refuses connections, taking the one that writes."""
    host, port = _host_port(url)
    parts = urlsplit(url)
    return f"postgresql://{_user(url)}@127.0.0.1:1,{host}:{port}{parts.path}?target_session_attrs=read-write"


def via(url: str, host: str, port: int) -> str:
    parts = urlsplit(url)
    return f"postgresql://{_user(url)}@{host}:{port}{parts.path}"


def test_redis_key_prefix_reads_multi_host_urls():
    """urlsplit(url).port raised on `h1:p1,h2:p2`; the prefix names every host, in order."""
    one = redis_key_prefix("postgresql://u:secret@db:5432/wallet")
    assert one == redis_key_prefix("postgresql://other@DB/wallet")  # user, case and default port
    many = redis_key_prefix("postgresql://u@h1:5432,h2:5433/wallet?target_session_attrs=read-write")
    assert many != one
    assert many == redis_key_prefix("postgresql://u@h1,h2:5433/wallet")
    assert many != redis_key_prefix("postgresql://u@h1:5432,h2:5433/other")


async def test_every_command_works_with_a_multi_host_url(create_database):
    url = multi_host(await create_database())

    def ok(*args: str) -> str:
        result = wallet_on(url, *args)
        assert result.returncode == 0, f"wallet {' '.join(args)}: {result.stderr}"
        return result.stdout

    ok("migrate")  # Alembic refused the URL (SQLAlchemy's URL parser)
    ok("migrate")
    ok("seed")
    token = ok("keys", "create", "--name", "multi-host", "--scope", "read", "--scope", "credit").strip()
    assert token.startswith("wk_")
    assert "multi-host" in ok("keys", "list")
    rotated = ok("keys", "rotate", token[:11], "--overlap-seconds", "60").strip()
    assert rotated.startswith("wk_")
    ok("expire")
    ok("holds", "release-expired")
    ok("prune-idempotency")
    ok("prune-events")
    assert "asset_type" in ok("report", "liabilities")
    assert "OK" in ok("verify")
    ok("role-settings")

    service = ServiceProcess({"WALLET_DATABASE_URL": url, "WALLET_LOG_LEVEL": "WARNING"})
    await asyncio.to_thread(service.start)
    try:
        async with httpx.AsyncClient(base_url=service.base_url, headers=bearer(rotated)) as http:
            posted = await http.post(
                "/api/v1/transactions/topup",
                json={"user_id": "user_001", "asset_type": "GOLD_COINS", "amount": 5},
                headers={"Idempotency-Key": "multi-host-1"},
            )
            assert posted.status_code == 201, posted.text
            assert (await http.get("/api/v1/wallets/user_001/balance")).status_code == 200
    finally:
        service.stop()
    assert "OK" in ok("verify")


# --- pgbouncer, transaction mode ---------------------------------------------------------------


def _pgbouncer() -> str:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if found is None:
        pytest.skip("pgbouncer is not installed (make cluster-deps installs Debian's)")
    return found


@contextlib.contextmanager
def pgbouncer(server_url: str, database: str) -> Iterator[int]:
    """pgbouncer in transaction mode on a free port, in front of `database` of the test server.
    pgbouncer will not run as root: as root it runs as the `postgres` user."""
    binary = _pgbouncer()
    host, port = _host_port(server_url)
    listen = free_port()
    folder = Path(tempfile.mkdtemp(prefix="wallet-pgbouncer-"))
    (folder / "pgbouncer.ini").write_text(
        f"""[databases]
{database} = host={host} port={port} dbname={database} user={_user(server_url)}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = 8
max_client_conn = 200
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = {folder / "pgbouncer.log"}
"""
    )
    command = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        command = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *command]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", listen), 0.2):
                break
            if process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {(folder / 'pgbouncer.log').read_text()}")
            time.sleep(0.05)
        yield listen
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


async def test_through_pgbouncer_in_transaction_mode(server_url, create_database):
    """The configuration the README gives for pgbouncer (transaction mode): no statement cache,
    no startup parameters (timeouts on the role, by `wallet role-settings`), a direct URL for
    session state. Migrations, concurrent writes and reads, the audit's turn and the webhook
    deliverer's locks all work, and every connection has the session settings."""
    direct = await create_database()
    database = urlsplit(direct).path.lstrip("/")
    with pgbouncer(server_url, database) as port:
        pooled = via(direct, "127.0.0.1", port)
        env = {
            "WALLET_DIRECT_DATABASE_URL": direct,
            "WALLET_DB_STATEMENT_CACHE_SIZE": "0",
            "WALLET_DB_STARTUP_PARAMETERS": "0",
        }
        # The role's settings first: pgbouncer's server connections opened before keep the old ones.
        for args in (("role-settings",), ("migrate",), ("seed",), ("verify",)):
            result = wallet_on(pooled, *args, env=env)
            assert result.returncode == 0, f"wallet {args[0]}: {result.stderr}"
        # Without the configuration pgbouncer refuses the startup parameters.
        refused = wallet_on(pooled, "verify")
        assert refused.returncode != 0
        assert "lock_timeout" in refused.stderr or "unsupported startup parameter" in refused.stderr

        settings = Settings(
            database_url=pooled,
            direct_database_url=direct,
            db_statement_cache_size=0,
            db_startup_parameters=False,
            db_pool_min_size=2,
            db_pool_max_size=16,
            hold_sweep_interval_ms=0,
            lot_expiry_interval_ms=0,
            audit_interval_ms=0,
            audit_settle_ms=0,
            key_usage_flush_ms=0,
            webhook_poll_interval_ms=0,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            pool: asyncpg.Pool = app.state.resources.pool
            # The role's settings reach every server connection pgbouncer hands out.
            values = await asyncio.gather(*(pool.fetchval("SHOW lock_timeout") for _ in range(20)))
            assert set(values) == {"2s"}
            assert await pool.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
            async with pool.acquire() as conn:
                token = await create_api_key(conn, "bouncer", ["read", "credit", "spend", "admin"])
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://t", headers=bearer(token)
            ) as http:

                async def topup(i: int) -> int:
                    response = await http.post(
                        "/api/v1/transactions/topup",
                        json={"user_id": f"bouncer_{i % 5}", "asset_type": "GOLD_COINS", "amount": 3},
                        headers={"Idempotency-Key": f"bouncer-{i}"},
                    )
                    return response.status_code

                await asyncio.gather(
                    *(
                        http.post("/api/v1/users", json={"user_id": f"bouncer_{i}", "name": "B"})
                        for i in range(5)
                    )
                )
                statuses = await asyncio.gather(*(topup(i) for i in range(60)))
                assert set(statuses) == {201}
                replays = await asyncio.gather(*(topup(i) for i in range(10)))
                assert set(replays) == {201}
                for i in range(5):
                    balance = await http.get(f"/api/v1/wallets/bouncer_{i}/balance")
                    assert balance.status_code == 200, balance.text
                    gold = [b for b in balance.json()["balances"] if b["asset_type"] == "GOLD_COINS"]
                    assert gold[0]["balance"] == 36, gold
                # The audit holds its turn (a session lock) on the direct connection.
                audit = await http.get("/api/v1/audit")
                assert audit.status_code == 200, audit.text
                assert audit.json()["clean"] is True
            deliverer = app.state.webhook_deliverer
            assert deliverer is None  # polling is off here; its lock pool is checked below
        result = wallet_on(pooled, "verify", env=env)
        assert result.returncode == 0, result.stderr
    # pgbouncer is gone: the webhook deliverer's locks still work, so they never went through it.
    from wallet.services.webhooks import Deliverer

    deliverer = Deliverer(pool, settings, pooled)
    try:
        locks = await deliverer._locks()
        async with locks.acquire() as conn:
            assert await conn.fetchval("SELECT pg_try_advisory_lock(1, 2)") is True
            assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") >= 1
    finally:
        await deliverer.close()


# --- connection loss: 503, never 500 ------------------------------------------------------------


class Proxy:
    """A TCP proxy to the database that can cut every connection and refuse new ones, as a
    primary that dies does, and come back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Stops listening and resets every open connection."""
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            transport = writer.transport
            transport.abort()
        self.writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def proxied(database_url: str, settings: Settings) -> AsyncIterator[tuple[Proxy, Any]]:
    proxy = Proxy(_host_port(database_url))
    await proxy.start()
    app = create_app(
        settings.model_copy(
            update={"database_url": via(database_url, "127.0.0.1", proxy.port), "webhook_poll_interval_ms": 0}
        )
    )
    async with app.router.lifespan_context(app):
        yield proxy, app
    await proxy.cut()


async def test_connection_lost_mid_request_is_503_with_retry_after_and_the_pool_recovers(
    proxied, pool, keys, make_user
):
    proxy, app = proxied
    user = await make_user(GOLD_COINS=100)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=bearer(keys["admin"])
    ) as http:

        def topup(key: str) -> Awaitable[httpx.Response]:
            return http.post(
                "/api/v1/transactions/topup",
                json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 7},
                headers={"Idempotency-Key": key},
            )

        assert (await topup(f"warm-{uuid.uuid4()}")).status_code == 201
        key = f"lost-{uuid.uuid4()}"
        # The top-up waits on the account's row lock, held here, when its connection is cut.
        async with pool.acquire() as blocker, blocker.transaction():
            await blocker.execute(
                "SELECT 1 FROM accounts WHERE user_id = $1 AND asset_code = 'GOLD_COINS' FOR UPDATE", user
            )
            request = asyncio.create_task(topup(key))
            await waiting_on(pool, blocker.get_server_pid())
            assert not request.done()
            await proxy.cut()
            lost = await request
        assert lost.status_code == 503, lost.text
        assert lost.headers["Retry-After"]
        assert lost.json()["error"]["code"] == "database_unavailable"
        # While the database cannot be reached: 503 on writes and reads, never 500.
        for response in (await topup(key), await http.get(f"/api/v1/wallets/{user}/balance")):
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"]
        await proxy.start()
        # The pool recovers by itself: its dead connections are replaced.
        for _ in range(50):
            retried = await topup(key)
            if retried.status_code != 503:
                break
            await asyncio.sleep(0.1)
        assert retried.status_code == 201, retried.text
    count = await pool.fetchval("SELECT count(*) FROM transactions WHERE idempotency_key = $1", key)
    assert count == 1


async def test_role_settings_sql_names_every_session_setting(settings: Settings) -> None:
    statements = role_settings_sql(settings)
    for name in (
        "lock_timeout",
        "statement_timeout",
        "idle_in_transaction_session_timeout",
        "plan_cache_mode",
    ):
        assert any(f"'{name}'" in sql for sql in statements)


async def test_reports_read_from_the_read_url_and_show_its_lag(database_url, settings, keys):
    """WALLET_READ_DATABASE_URL: the reports read there and say how stale they may be (here the
    primary itself, so 0; a replica's lag is shown the same way, by make failover-test's cluster)."""
    app = create_app(
        settings.model_copy(
            update={"read_database_url": multi_host(database_url), "webhook_poll_interval_ms": 0}
        )
    )
    async with app.router.lifespan_context(app):
        assert app.state.resources.read_pool is not app.state.resources.pool
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", headers=bearer(keys["admin"])
        ) as http:
            for path in ("/api/v1/reports/liabilities", "/api/v1/reports/volume"):
                response = await http.get(path)
                assert response.status_code == 200, response.text
                assert response.headers["X-Wallet-Read-Lag-Seconds"] == "0.0"
            # Writes and balances never read there.
            balance = await http.get("/api/v1/wallets/user_001/balance")
            assert "X-Wallet-Read-Lag-Seconds" not in balance.headers
