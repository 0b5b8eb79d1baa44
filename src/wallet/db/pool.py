"""The asyncpg connection pool and the session settings every connection gets.

Timeouts are set per session so that no request can hold a row lock, wait on one, or sit idle in
a transaction for longer than the configured bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import structlog

from wallet.db.urls import asyncpg_url
from wallet.settings import Settings

log = structlog.get_logger("wallet.db")

# What a database that is still starting, restarting or not yet resolvable answers: worth a retry.
# A wrong password or database name is not, and fails at once.
# With several hosts, none taking writes yet (a cluster electing its primary) is "not yet" too.
_NOT_YET = (
    OSError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.exceptions.TargetServerAttributeNotMatched,
)
_BACKOFF_FIRST_S = 0.25
_BACKOFF_CAP_S = 5.0


def session_settings(settings: Settings) -> dict[str, str]:
    """What every session is set to. Sent as startup parameters, or, with
    WALLET_DB_STARTUP_PARAMETERS=0 (pgbouncer), set on the role by `wallet role-settings`."""
    return {
        "application_name": "wallet",
        "timezone": "UTC",
        "lock_timeout": f"{settings.db_lock_timeout_ms}ms",
        "statement_timeout": f"{settings.db_statement_timeout_ms}ms",
        "idle_in_transaction_session_timeout": f"{settings.db_idle_in_transaction_timeout_ms}ms",
        # The posting functions run the same point lookups and writes millions of times. With the
        # default (auto) PL/pgSQL kept re-planning several of them on every call (a third of the
        # CPU of a posting); their generic plans are the right plans.
        "plan_cache_mode": "force_generic_plan",
        # The ledger's hot pages live in memory or on SSD; at the default of 4 the planner chose
        # to hash-join a batch's 200 new entries against a sequential scan of every transaction
        # (10 ms at 20k rows, growing with the table) instead of 200 index probes.
        "random_page_cost": "1.1",
        # No JIT: a statement here reads a few rows by key. On a ledger whose statistics predate
        # its growth (autovacuum off, a bulk load) the estimates of those probes were large enough
        # to pass jit_above_cost, and every write's answer compiled its query again: 17 ms of a
        # 20 ms top-up (issue 20).
        "jit": "off",
    }


def startup_parameters(settings: Settings, application_name: str = "wallet") -> dict[str, str]:
    """The server settings sent when connecting: all of them, or, for a pooler that refuses the
    others (pgbouncer accepts application_name and TimeZone), those two only."""
    if settings.db_startup_parameters:
        return {**session_settings(settings), "application_name": application_name}
    return {"application_name": application_name, "timezone": "UTC"}


def role_settings_sql(settings: Settings) -> list[str]:
    """The session settings as defaults of the connecting role in the current database, for
    connections through a pooler that does not pass them at connect."""
    return [
        "DO $$BEGIN EXECUTE format('ALTER ROLE %I IN DATABASE %I SET %I = %L',"
        f" current_user, current_database(), '{name}', '{value}'); END$$"
        for name, value in session_settings(settings).items()
        if name != "application_name"
    ]


async def session_settings_differences(settings: Settings, pool: asyncpg.Pool) -> dict[str, str]:
    """The session settings this connection does not have (name: what it has instead)."""
    differences: dict[str, str] = {}
    for name, value in session_settings(settings).items():
        if name == "application_name":
            continue
        row = await pool.fetchrow("SELECT setting, unit FROM pg_settings WHERE lower(name) = lower($1)", name)
        have = f"{row['setting']}{row['unit'] or ''}" if row is not None else "?"
        if str(have).lower() != value.lower():
            differences[name] = str(have)
    return differences


# How far behind the primary this server's data is, in seconds: 0 on a primary, and on a replica
# that has replayed all it received; else the age of the last transaction it replayed.
REPLICA_LAG_SQL = """
SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0::float8
            WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0::float8
            ELSE extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8 END
"""


async def replica_lag_s(pool: asyncpg.Pool) -> float:
    lag = await pool.fetchval(REPLICA_LAG_SQL)
    return round(float(lag or 0), 3)


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Replaces asyncpg's reset-on-release, a full extra round trip per request (`RESET ALL`,
    `pg_advisory_unlock_all()`, ...). Nothing here leaves session state behind: settings are fixed
    at connect, advisory locks are transaction-scoped, there are no LISTENs or cursors, and asyncpg
    still rolls back a transaction left open before this is called."""


async def create_session_pool(settings: Settings, database_url: str, application_name: str) -> asyncpg.Pool:
    """A small pool on WALLET_DIRECT_DATABASE_URL (or `database_url`) for session advisory locks,
    with asyncpg's own reset on release, which releases every advisory lock a connection kept."""
    pool = await asyncpg.create_pool(
        asyncpg_url(settings.session_database_url(database_url)),
        min_size=0,
        max_size=max(2, settings.webhook_max_concurrency),
        timeout=settings.db_connect_timeout_ms / 1000,
        command_timeout=(settings.db_statement_timeout_ms + 1_000) / 1000,
        server_settings=startup_parameters(settings, application_name),
        statement_cache_size=settings.db_statement_cache_size,
    )
    assert pool is not None
    return pool


async def create_pool(settings: Settings, database_url: str) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        asyncpg_url(database_url),
        min_size=min(settings.db_pool_min_size, settings.db_pool_max_size),
        max_size=settings.db_pool_max_size,
        max_inactive_connection_lifetime=settings.db_pool_idle_timeout_ms / 1000,
        timeout=settings.db_connect_timeout_ms / 1000,
        command_timeout=(settings.db_statement_timeout_ms + 1_000) / 1000,
        server_settings=startup_parameters(settings),
        statement_cache_size=settings.db_statement_cache_size,
        reset=_keep_session,
    )
    assert pool is not None
    return pool


@asynccontextmanager
async def connection(settings: Settings, database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A single connection with the same session settings, closed on exit; for CLI commands."""
    conn = await asyncpg.connect(
        asyncpg_url(database_url),
        timeout=settings.db_connect_timeout_ms / 1000,
        server_settings=startup_parameters(settings),
        statement_cache_size=settings.db_statement_cache_size,
    )
    try:
        yield conn
    finally:
        await conn.close()


async def wait_for_database(settings: Settings, database_url: str) -> None:
    """Returns once the database accepts a connection; at start-up (`wallet migrate`, each worker of
    `wallet serve`), so a container that starts before its database (compose, a Railway deploy, a
    database restart) waits for it instead of depending on the platform's health conditions.
    Retries with exponential backoff (0.25 s doubling to 5 s) for WALLET_DB_STARTUP_WAIT_MS, then
    raises the last error."""
    deadline = time.monotonic() + settings.db_startup_wait_ms / 1000
    delay = _BACKOFF_FIRST_S
    attempt = 1
    while True:
        try:
            conn = await asyncpg.connect(
                asyncpg_url(database_url), timeout=settings.db_connect_timeout_ms / 1000
            )
        except _NOT_YET as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            delay = min(delay, left)
            log.warning("database_unavailable", attempt=attempt, error=repr(exc), retry_in_s=round(delay, 2))
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_CAP_S)
            attempt += 1
        else:
            await conn.close()
            if attempt > 1:
                log.info("database_available", attempts=attempt)
            return
