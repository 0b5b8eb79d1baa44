"""Runs a whole SQL file inside an Alembic migration.

The schema is plain SQL (PL/pgSQL functions, triggers) kept in `wallet/db/sql/`, readable and
runnable with psql. Alembic's bind goes through asyncpg, whose extended protocol accepts one
statement per call, so the file is sent through the driver connection's simple-query `execute`.
"""

from __future__ import annotations

from importlib.resources import files

from alembic import op
from sqlalchemy.util import await_only


def run_sql_script(name: str) -> None:
    sql = files("wallet.db").joinpath("sql", name).read_text(encoding="utf-8")
    driver_connection = op.get_bind().connection.driver_connection
    await_only(driver_connection.execute(sql))
