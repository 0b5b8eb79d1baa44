"""One insert path per ledger table (issue 18): every kind of posting goes through the core
`wallet_post(wallet_posting[])`, the only writer of `transactions` and `ledger_entries` and of the
events of transactions (`transaction.posted`, since migration 0017: the statement that inserts a
transaction writes its event; the events of holds are written by their triggers), and every
stored outcome through `wallet_idempotency_store`. In the live function files and in the
installed database alike (a function of an older revision left installed would be a second
path, as would the trigger function that wrote transactions' events before 0017); each
`insufficient_funds` body is built in one place."""

from __future__ import annotations

import re

import asyncpg
import pytest

from wallet.db.sql_files import function_files

WRITERS = {
    "transactions": "wallet_post",
    "ledger_entries": "wallet_post",
    "idempotency_keys": "wallet_idempotency_store",
    "transaction_events": "wallet_post",
}


def _code(sql: str) -> str:
    """The SQL without its comments."""
    return re.sub(r"--[^\n]*", "", sql)


def _inserts(table: str) -> str:
    if table == "transaction_events":
        # An INSERT into events that names a transaction (the column, or the type of event) before
        # its statement ends: the hold triggers' INSERTs name neither.
        return r"INSERT\s+INTO\s+events\b[^;]*?(transaction_id|'transaction\.posted')"
    return rf"INSERT\s+INTO\s+{table}\b"


@pytest.mark.parametrize("table", sorted(WRITERS))
def test_the_live_function_files_insert_into_each_ledger_table_once(table: str) -> None:
    found = sum(len(re.findall(_inserts(table), _code(sql), re.IGNORECASE)) for sql in function_files())
    assert found == 1, f"{found} INSERTs into {table} in db/sql/functions; the posting core is the one path"


def test_the_statement_that_inserts_transactions_inserts_their_events() -> None:
    """Nothing in the database checks that a transaction has its event (migration 0017 says why):
    the one INSERT into transactions and the one INSERT of transactions' events are in one
    statement of the core, so a posting has its event, or neither is written."""
    core = _code(next(sql for sql in function_files() if re.search(_inserts("transactions"), sql)))
    statement = re.search(rf"{_inserts('transactions')}[^;]*;", core, re.IGNORECASE)
    assert statement is not None
    assert re.search(_inserts("transaction_events"), statement.group(0), re.IGNORECASE)
    assert "FROM posted t" in statement.group(0)  # each event's transaction is one this statement posted


def test_the_insufficient_funds_body_is_built_in_one_place() -> None:
    found = sum(
        len(re.findall(r"wallet_error_body\(\s*'insufficient_funds'", _code(sql))) for sql in function_files()
    )
    assert found == 1


async def test_the_installed_database_has_one_writer_per_ledger_table(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for table, writer in WRITERS.items():
            writers = await conn.fetch(
                "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE n.nspname = current_schema() AND p.prosrc ~* $1",
                _inserts(table).replace(r"\b", r"\M"),
            )
            assert [r["proname"] for r in writers] == [writer], table
    finally:
        await conn.close()
