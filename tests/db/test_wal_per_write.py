"""Migration 0013: rows a posting writes leave to their transaction what it holds (an entry's asset
and time, a lot movement's time), and the time of a user's posting is found by bisection over
seq (wallet_account_seq_at) instead of an index of its own."""

from __future__ import annotations

import asyncpg
import pytest

from tests.support import new_key, refused_by_check


@pytest.fixture
async def conn(database_url):
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


async def _post(
    conn: asyncpg.Connection, api_key_id: int, kind: str, user: str, asset: str, amount: int
) -> None:
    outcome = await conn.fetchval(
        "SELECT outcome FROM wallet_post_transaction($1, $2, $3, $4, $5, $6, NULL, '{}')",
        api_key_id,
        new_key(),
        kind,
        user,
        asset,
        amount,
    )
    assert outcome == "posted"


async def test_entries_and_movements_of_a_posting_leave_asset_and_time_to_its_transaction(
    conn, pool, make_user
):
    user = await make_user()
    api_key_id = await pool.fetchval("SELECT id FROM api_keys WHERE name = 'test-all'")
    await _post(conn, api_key_id, "topup", user, "GOLD_COINS", 10)
    await _post(conn, api_key_id, "spend", user, "GOLD_COINS", 4)
    entries = await conn.fetch(
        "SELECT e.asset_code, e.created_at FROM ledger_entries e JOIN transactions t ON t.id = e.transaction_id"
        " WHERE t.user_id = $1",
        user,
    )
    assert len(entries) == 4
    assert {(r["asset_code"], r["created_at"]) for r in entries} == {(None, None)}
    movements = await conn.fetch(
        "SELECT m.created_at FROM lot_movements m JOIN transactions t ON t.id = m.transaction_id WHERE t.user_id = $1",
        user,
    )
    assert len(movements) == 2
    assert {r["created_at"] for r in movements} == {None}


async def test_an_entry_may_name_only_its_transactions_asset(conn, pool, make_user):
    """NULL is the transaction's asset; an asset named must still be the transaction's."""
    user = await make_user()
    api_key_id = await pool.fetchval("SELECT id FROM api_keys WHERE name = 'test-all'")
    account_id = await conn.fetchval(
        "SELECT id FROM accounts WHERE user_id = $1 AND asset_code = 'GOLD_COINS'", user
    )
    treasury = await conn.fetchval(
        "SELECT id FROM accounts WHERE system_code = 'SYSTEM_TREASURY' AND asset_code = 'GOLD_COINS'"
    )
    statement = """
    WITH t AS (
        INSERT INTO transactions (type, api_key_id, idempotency_key, user_id, asset_code, amount_minor,
                                  balance_after_minor)
        VALUES ('topup', $1, $2, $3, 'GOLD_COINS', 5, 5) RETURNING id
    )
    INSERT INTO ledger_entries (transaction_id, entry_no, account_id, asset_code, amount_minor)
    SELECT t.id, e.entry_no, e.account_id, $6, e.amount FROM t,
           (VALUES (1::smallint, $4::bigint, 5::bigint), (2::smallint, $5::bigint, -5::bigint)) AS e(entry_no, account_id, amount)
    """
    with pytest.raises(asyncpg.exceptions.CheckViolationError, match="another asset"):
        await conn.execute(statement, api_key_id, new_key(), user, account_id, treasury, "DIAMONDS")


async def test_a_lot_movement_without_a_transaction_keeps_a_time_of_its_own(conn, pool, make_user):
    """Only the opening lots of migration 0009 have no transaction; such a movement needs its time."""
    user = await make_user(GOLD_COINS=10)
    lot_id = await conn.fetchval(
        "SELECT l.id FROM credit_lots l JOIN accounts a ON a.id = l.account_id WHERE a.user_id = $1", user
    )
    await refused_by_check(
        conn,
        "lot_movements_dated",
        "INSERT INTO lot_movements (transaction_id, lot_id, amount_minor, movement_no) VALUES (NULL, $1, 1, 1)",
        lot_id,
    )
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute(
            "INSERT INTO lot_movements (transaction_id, lot_id, amount_minor, movement_no, created_at)"
            " VALUES (NULL, $1, 1, 1, now())",
            lot_id,
        )
    finally:
        await transaction.rollback()


async def test_a_lot_movement_has_its_place_in_its_transaction_once(conn, pool, make_user):
    """A new movement is numbered (1, 2, ...) and has no id; one written before 0013 has its id."""
    user = await make_user(GOLD_COINS=10)
    movement = await conn.fetchrow(
        "SELECT m.* FROM lot_movements m JOIN transactions t ON t.id = m.transaction_id WHERE t.user_id = $1",
        user,
    )
    assert (movement["id"], movement["movement_no"]) == (None, 1)
    insert = (
        "INSERT INTO lot_movements (transaction_id, lot_id, amount_minor, id, movement_no, created_at)"
        " VALUES (NULL, $1, 1, $2, $3, now())"
    )
    for no_id, movement_no in ((None, None), (7, 1), (None, 0)):
        await refused_by_check(conn, "lot_movements_ordered", insert, movement["lot_id"], no_id, movement_no)


async def test_the_postings_either_side_of_an_instant_are_those_of_the_time_order(conn, pool, make_user):
    """wallet_account_seq_at against the answer read in time order (the newest posting stamped
    before the instant, or at it when inclusive, and the oldest after that), at every posting's
    stamp, a microsecond either side, long before the first and after the last, on two asset
    accounts whose postings interleave (the seq values of one are not consecutive) and one with none."""
    user = await make_user()
    api_key_id = await pool.fetchval("SELECT id FROM api_keys WHERE name = 'test-all'")
    for n in range(40):
        asset = "DIAMONDS" if n % 3 == 0 else "GOLD_COINS"
        await _post(conn, api_key_id, "spend" if n % 4 == 3 else "topup", user, asset, 1)
    stamps = await conn.fetch("SELECT created_at FROM transactions WHERE user_id = $1 ORDER BY seq", user)
    assert len(stamps) == 40
    rows = await conn.fetch(
        """
        SELECT a.code, x.at, i.inclusive, s.before_seq, s.after_seq,
               (SELECT t.seq FROM transactions t
                 WHERE t.user_id = $1 AND t.asset_code = a.code
                   AND (t.created_at < x.at OR (i.inclusive AND t.created_at = x.at))
                 ORDER BY t.created_at DESC, t.seq DESC LIMIT 1) AS expected_before,
               (SELECT t.seq FROM transactions t
                 WHERE t.user_id = $1 AND t.asset_code = a.code
                   AND NOT (t.created_at < x.at OR (i.inclusive AND t.created_at = x.at))
                 ORDER BY t.created_at, t.seq LIMIT 1) AS expected_after
          FROM unnest(ARRAY['GOLD_COINS', 'DIAMONDS', 'LOYALTY_POINTS']) AS a(code),
               (SELECT s.created_at + d.delta AS at
                  FROM unnest($2::timestamptz[]) AS s(created_at),
                       unnest(ARRAY[interval '-1 microsecond', interval '0', interval '1 microsecond',
                                    interval '-1 hour', interval '1 hour']) AS d(delta)) AS x,
               unnest(ARRAY[true, false]) AS i(inclusive),
               wallet_account_seq_at($1, a.code, x.at, i.inclusive) AS s
        """,
        user,
        [r["created_at"] for r in stamps],
    )
    assert len(rows) == 3 * 40 * 5 * 2
    assert any(r["before_seq"] is not None and r["after_seq"] is not None for r in rows)
    wrong = [
        tuple(r)
        for r in rows
        if (r["before_seq"], r["after_seq"]) != (r["expected_before"], r["expected_after"])
    ]
    assert wrong == []


async def test_a_posted_writes_idempotency_record_is_as_old_as_its_transaction(conn, pool, make_user):
    """Only a record without a transaction keeps a time of its own; the prune reads the transaction's."""
    user = await make_user()
    api_key_id = await pool.fetchval("SELECT id FROM api_keys WHERE name = 'test-all'")
    key = new_key()
    await conn.fetchval(
        "SELECT outcome FROM wallet_post_transaction($1, $2, 'topup', $3, 'GOLD_COINS', 5, NULL, '{}')",
        api_key_id,
        key,
        user,
    )
    record = await conn.fetchrow(
        "SELECT created_at, transaction_id FROM idempotency_keys WHERE api_key_id = $1 AND key = $2",
        api_key_id,
        key,
    )
    assert record["created_at"] is None and record["transaction_id"] is not None
    await refused_by_check(
        conn,
        "idempotency_keys_dated",
        "INSERT INTO idempotency_keys (api_key_id, key, request_sha256, outcome, response_body, created_at)"
        " VALUES ($1, $2, sha256('a'), 'validation_error', '{}', NULL)",
        api_key_id,
        new_key(),
    )
