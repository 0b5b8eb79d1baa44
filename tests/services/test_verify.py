"""`wallet verify` is clean on honest books and names what is wrong on corrupted ones."""

from __future__ import annotations

from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.support import verify_books, wallet_on
from wallet.services.seed import seed_demo_data


@pytest.mark.last
async def test_verify_is_clean_after_the_whole_suite(database_url):
    """Runs last: everything every other test posted, raced and rejected still balances."""
    report = await verify_books(database_url)
    assert report.clean, report.render()
    assert report.transactions > 100
    result = wallet_on(database_url, "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: the books balance" in result.stdout


async def test_verify_fails_on_a_corrupted_copy(create_database, create_migrated_database, server_url):
    original = await create_migrated_database()
    conn = await asyncpg.connect(original)
    try:
        await seed_demo_data(conn)
    finally:
        await conn.close()
    assert wallet_on(original, "verify").returncode == 0

    copy = await create_database(template=urlsplit(original).path.lstrip("/"))
    conn = await asyncpg.connect(copy)
    try:
        # What only a superuser bypassing triggers could do: drift a cached balance and append an
        # entry that breaks a transaction's zero sum.
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(
            "UPDATE accounts SET balance_minor = balance_minor + 7"
            " WHERE user_id = 'user_001' AND asset_code = 'GOLD_COINS'"
        )
        await conn.execute(
            "INSERT INTO ledger_entries (transaction_id, entry_no, account_id, asset_code, amount_minor)"
            " SELECT t.id, 3, a.id, 'DIAMONDS', 3 FROM transactions t, accounts a"
            " WHERE t.user_id = 'user_002' AND t.asset_code = 'DIAMONDS'"
            "   AND a.user_id = 'user_002' AND a.asset_code = 'DIAMONDS'"
        )
    finally:
        await conn.close()

    result = wallet_on(copy, "verify")
    assert result.returncode == 1
    assert "cached user balance differs" in result.stdout
    assert "user_001 GOLD_COINS): cached balance 1007, ledger sum 1000" in result.stdout
    assert "do not sum to zero" in result.stdout
    assert "the whole ledger does not sum to zero for an asset" in result.stdout
    # The original is untouched and still clean.
    assert wallet_on(original, "verify").returncode == 0
