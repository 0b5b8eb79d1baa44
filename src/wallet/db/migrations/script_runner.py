"""Runs a whole SQL file inside an Alembic migration.

The schema is plain SQL (PL/pgSQL functions, triggers) kept in `wallet/db/sql/`, readable and
runnable with psql. Alembic's bind goes through asyncpg, whose extended protocol accepts one
statement per call, so the file is sent through the driver connection's simple-query `execute`.
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only

from wallet.db.sql_files import read_sql


def run_sql_script(name: str) -> None:
    driver_connection = op.get_bind().connection.driver_connection
    assert driver_connection is not None
    await_only(driver_connection.execute(read_sql(name)))
