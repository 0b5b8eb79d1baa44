"""Alembic environment: migrations run over the same asyncpg driver the service uses.

Around the versioned migrations: the generated rule functions (wallet.db.rules) are installed
first, because constraints refer to them, and the posting functions (db/sql/functions/*.sql) are
re-installed last when upgrading to head, so each `wallet migrate` leaves them as the code says,
followed by the rule constraints of the hot tables with literal values (wallet.db.rules).

All of it runs under one session advisory lock, so any number of processes may migrate one
database at once (containers or Railway replicas starting together, each running `wallet
migrate`): they take turns, and every one after the first finds the schema at head. Without it
three containers starting on a new database failed two of them (UniqueViolation, UndefinedObject).
"""

from __future__ import annotations

import asyncio

import asyncpg
from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.util import await_only

from wallet.db.rules import rule_constraints_sql, rules_sql
from wallet.db.sql_files import function_files
from wallet.db.urls import asyncpg_url

# The two-key form, (space, id): apart from the one-key locks on idempotency keys and the audit's,
# and from the webhooks' space (wallet.services.webhooks.LOCK_SPACE).
MIGRATION_LOCK_SPACE = 0x57_4D_49_47  # "WMIG"
MIGRATION_LOCK_ID = 1


def _execute_script(connection: Connection, sql: str) -> None:
    # The simple-query protocol: a whole script, several statements, in one call.
    await_only(connection.connection.driver_connection.execute(sql))  # type: ignore[union-attr]


def _run_migrations(connection: Connection) -> None:
    # Session-level: held across the migrations' own transactions, until the connection closes
    # at the end of _run_online (or dies with its process), so a crash mid-way never keeps it.
    _execute_script(connection, f"SELECT pg_advisory_lock({MIGRATION_LOCK_SPACE}, {MIGRATION_LOCK_ID})")
    context.configure(connection=connection, transaction_per_migration=True)
    _execute_script(connection, rules_sql())
    with context.begin_transaction():
        context.run_migrations()
    if context.config.attributes.get("install_functions", True):
        for sql in function_files():
            _execute_script(connection, sql)
        _execute_script(connection, rule_constraints_sql())


async def _run_online() -> None:
    url = asyncpg_url(context.config.attributes["database_url"])

    async def connect() -> asyncpg.Connection:
        # asyncpg reads the URL itself: SQLAlchemy's URL parser refuses several hosts
        # (`h1:p1,h2:p2/db?target_session_attrs=read-write`), which asyncpg connects through.
        return await asyncpg.connect(url)

    engine = create_async_engine("postgresql+asyncpg://", async_creator=connect, poolclass=NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(_run_migrations)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline SQL generation is not supported: the schema lives in wallet/db/sql/*.sql")
asyncio.run(_run_online())
