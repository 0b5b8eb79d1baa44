"""The database itself refuses what would break the books, whoever connects to it."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from tests.support import new_key


@pytest.fixture
async def conn(database_url):
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


@pytest.fixture
async def posted(conn, pool, make_user):
    """A user with one posted top-up; returns (user_id, transaction_id, account_id)."""
    user = await make_user()
    api_key_id = await pool.fetchval("SELECT id FROM api_keys WHERE name = 'test-all'")
    body = await conn.fetchval(
        "SELECT body FROM wallet_post_transaction($1, $2, 'topup', $3, 'GOLD_COINS', 10, NULL, '{}')",
        api_key_id,
        new_key(),
        user,
    )
    import json

    transaction_id = uuid.UUID(json.loads(body)["id"])
    account_id = await conn.fetchval(
        "SELECT id FROM accounts WHERE user_id = $1 AND asset_code = 'GOLD_COINS'", user
    )
    return user, transaction_id, account_id


async def test_ledger_entries_cannot_be_updated_deleted_or_truncated(conn, posted):
    _, transaction_id, _ = posted
    for sql in (
        "UPDATE ledger_entries SET amount_minor = amount_minor * 2 WHERE transaction_id = $1",
        "DELETE FROM ledger_entries WHERE transaction_id = $1",
    ):
        with pytest.raises(asyncpg.exceptions.RestrictViolationError, match="append-only"):
            await conn.execute(sql, transaction_id)
    with pytest.raises(asyncpg.exceptions.RestrictViolationError):
        await conn.execute("TRUNCATE ledger_entries CASCADE")


async def test_posted_transactions_cannot_be_changed_or_deleted(conn, posted):
    _, transaction_id, _ = posted
    with pytest.raises(asyncpg.exceptions.RestrictViolationError):
        await conn.execute("UPDATE transactions SET amount_minor = 1 WHERE id = $1", transaction_id)
    with pytest.raises(asyncpg.exceptions.RestrictViolationError):
        await conn.execute("UPDATE transactions SET status = 'voided' WHERE id = $1", transaction_id)
    with pytest.raises(asyncpg.exceptions.RestrictViolationError):
        await conn.execute("DELETE FROM transactions WHERE id = $1", transaction_id)


INSERT_ENTRY = (
    "INSERT INTO ledger_entries (transaction_id, entry_no, account_id, asset_code, amount_minor)"
    " VALUES ($1, $2, $3, 'GOLD_COINS', $4)"
)
POST_WITH_ENTRIES = """
WITH t AS (
    INSERT INTO transactions (type, api_key_id, idempotency_key, user_id, asset_code, amount_minor,
                              balance_after_minor)
    VALUES ('topup', $1, 'manual', $2, 'GOLD_COINS', 5, 5) RETURNING id
)
INSERT INTO ledger_entries (transaction_id, entry_no, account_id, asset_code, amount_minor)
SELECT t.id, e.entry_no, e.account_id, 'GOLD_COINS', e.amount FROM t,
       jsonb_to_recordset($3::jsonb) AS e(entry_no smallint, account_id bigint, amount bigint)
"""


async def test_entries_cannot_be_appended_to_a_posted_transaction(conn, posted):
    _, transaction_id, account_id = posted
    treasury = await conn.fetchval(
        "SELECT id FROM accounts WHERE system_code = 'SYSTEM_TREASURY' AND asset_code = 'GOLD_COINS'"
    )
    with pytest.raises(asyncpg.exceptions.CheckViolationError, match="in one statement"):
        await conn.execute(INSERT_ENTRY, transaction_id, 3, account_id, 5)
    # Not even a balanced pair.
    with pytest.raises(asyncpg.exceptions.CheckViolationError, match="in one statement"):
        await conn.executemany(
            INSERT_ENTRY, [(transaction_id, 3, account_id, 5), (transaction_id, 4, treasury, -5)]
        )
    with pytest.raises(asyncpg.exceptions.CheckViolationError, match=r"1\.\.n"):
        await conn.execute(
            "INSERT INTO ledger_entries (transaction_id, entry_no, account_id, asset_code, amount_minor)"
            " VALUES ($1, 3, $2, 'GOLD_COINS', 5), ($1, 4, $3, 'GOLD_COINS', -5)",
            transaction_id,
            account_id,
            treasury,
        )


async def test_transactions_need_balanced_entries_of_known_accounts(conn, posted, make_user):
    import json

    user, _, account_id = posted
    api_key_id = await conn.fetchval("SELECT id FROM api_keys WHERE name = 'test-all'")
    treasury = await conn.fetchval(
        "SELECT id FROM accounts WHERE system_code = 'SYSTEM_TREASURY' AND asset_code = 'GOLD_COINS'"
    )
    diamonds = await conn.fetchval(
        "SELECT id FROM accounts WHERE system_code = 'SYSTEM_TREASURY' AND asset_code = 'DIAMONDS'"
    )
    cases = [
        ([], "must be written together with its ledger entries"),
        ([(1, account_id, 5)], "1..n|must be written together"),
        ([(1, account_id, 5), (2, treasury, -4)], "do not sum to zero"),
        ([(1, account_id, 5), (2, diamonds, -5)], "unknown account or another asset"),
        ([(1, account_id, 5), (2, 999_999_999, -5)], "unknown account or another asset"),
    ]
    other_user = await make_user(GOLD_COINS=1)  # of its own: the worker's database may hold no other
    other_user_account = await conn.fetchval(
        "SELECT id FROM accounts WHERE kind = 'user' AND user_id = $1 AND asset_code = 'GOLD_COINS'",
        other_user,
    )
    assert other_user_account is not None
    cases.append(([(1, other_user_account, 5), (2, treasury, -5)], "is on its user's account"))
    for entries, message in cases:
        payload = json.dumps([{"entry_no": n, "account_id": a, "amount": m} for n, a, m in entries])
        with pytest.raises(asyncpg.exceptions.CheckViolationError, match=message):
            await conn.execute(POST_WITH_ENTRIES, api_key_id, user, payload)
    # Entries written without their transaction in the same statement are refused too.
    with pytest.raises(asyncpg.exceptions.CheckViolationError, match="does not exist"):
        await conn.execute(INSERT_ENTRY, uuid.uuid4(), 1, account_id, 5)


async def test_rows_the_ledger_refers_to_cannot_be_deleted(conn, posted):
    user, _, account_id = posted
    for sql, args in [
        ("DELETE FROM accounts WHERE id = $1", (account_id,)),
        ("DELETE FROM users WHERE id = $1", (user,)),
        ("DELETE FROM api_keys WHERE name = $1", ("test-all",)),
        ("DELETE FROM asset_types WHERE code = $1", ("GOLD_COINS",)),
    ]:
        with pytest.raises(asyncpg.exceptions.RestrictViolationError):
            await conn.execute(sql, *args)
    for table in ("accounts", "users", "api_keys", "asset_types", "transactions"):
        with pytest.raises(asyncpg.exceptions.RestrictViolationError):
            await conn.execute(f"TRUNCATE {table} CASCADE")


async def test_user_balance_cannot_go_negative(conn, posted):
    _, _, account_id = posted
    with pytest.raises(asyncpg.exceptions.CheckViolationError, match="only an admin clawback"):
        await conn.execute("UPDATE accounts SET balance_minor = -1 WHERE id = $1", account_id)


async def test_idempotency_key_is_unique_per_caller(conn, pool, keys):  # keys: the test-all key
    api_key_id = await pool.fetchval("SELECT id FROM api_keys WHERE name = 'test-all'")
    key = new_key()
    insert = (
        "INSERT INTO idempotency_keys (api_key_id, key, request_sha256, outcome, response_body)"
        " VALUES ($1, $2, sha256('x'), 'posted', '{}')"
    )
    await conn.execute(insert, api_key_id, key)
    with pytest.raises(asyncpg.exceptions.UniqueViolationError):
        await conn.execute(insert, api_key_id, key)


async def test_amounts_are_positive_integers_in_the_schema(conn):
    columns = await conn.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE column_name LIKE '%minor' AND table_schema = 'public'"
    )
    assert columns
    assert {c["data_type"] for c in columns} == {"bigint"}


async def test_credit_lots_change_only_in_their_remaining_amount_and_movements_never(conn, posted):
    _, transaction_id, _ = posted
    lot_id = await conn.fetchval("SELECT lot_id FROM lot_movements WHERE transaction_id = $1", transaction_id)
    for statement in (
        "UPDATE credit_lots SET origin = 'granted' WHERE id = $1",
        "UPDATE credit_lots SET expires_at = now() WHERE id = $1",
        "UPDATE credit_lots SET account_id = account_id + 1 WHERE id = $1",
        "DELETE FROM credit_lots WHERE id = $1",
        "UPDATE lot_movements SET amount_minor = 1 WHERE lot_id = $1",
        "DELETE FROM lot_movements WHERE lot_id = $1",
    ):
        with pytest.raises(asyncpg.exceptions.RestrictViolationError):
            await conn.execute(statement, lot_id)
    for table in ("credit_lots", "lot_movements"):
        with pytest.raises(asyncpg.exceptions.RestrictViolationError):
            await conn.execute(f"TRUNCATE {table} CASCADE")
    with pytest.raises(asyncpg.exceptions.CheckViolationError):
        await conn.execute("UPDATE credit_lots SET remaining_minor = -1 WHERE id = $1", lot_id)


async def test_a_debit_its_lots_cannot_cover_is_refused_by_the_database(conn, pool, posted):
    """Lots that no longer add up to the balance (an edit by hand) stop the next spend, which
    would otherwise draw credits that are not there."""
    user, transaction_id, account_id = posted
    lot_id = await conn.fetchval("SELECT lot_id FROM lot_movements WHERE transaction_id = $1", transaction_id)
    await conn.execute("UPDATE credit_lots SET remaining_minor = 3 WHERE id = $1", lot_id)  # balance is 10
    api_key_id = await pool.fetchval("SELECT id FROM api_keys WHERE name = 'test-all'")
    try:
        with pytest.raises(asyncpg.exceptions.CheckViolationError, match="open lots"):
            await conn.execute(
                "SELECT * FROM wallet_post_transaction($1, $2, 'spend', $3, 'GOLD_COINS', 5, NULL, '{}')",
                api_key_id,
                new_key(),
                user,
            )
        assert await conn.fetchval("SELECT balance_minor FROM accounts WHERE id = $1", account_id) == 10
    finally:
        await conn.execute("UPDATE credit_lots SET remaining_minor = 10 WHERE id = $1", lot_id)
