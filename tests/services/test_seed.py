"""`wallet seed` and `psql -f seed.sql` give the same books, and both are idempotent."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import asyncpg
import pytest

from tests.support import wallet_on
from wallet.domain.rules import SystemAccount
from wallet.services.seed import DEMO_USERS

REPO_ROOT = Path(__file__).resolve().parents[2]


def psql_binary() -> str:
    found = shutil.which("psql")
    if found:
        return found
    import pgserver  # the embedded server's own client

    return str(Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql")


async def balances(url: str) -> dict[tuple[str, str], int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT user_id, asset_code, balance_minor FROM accounts WHERE kind = 'user'")
        return {(r["user_id"], r["asset_code"]): r["balance_minor"] for r in rows}
    finally:
        await conn.close()


async def counts(url: str) -> tuple[int, int, int, int]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM transactions), (SELECT count(*) FROM ledger_entries),"
            " (SELECT count(*) FROM accounts), (SELECT count(*) FROM asset_types)"
        )
        return tuple(row)  # type: ignore[return-value]
    finally:
        await conn.close()


@pytest.fixture
async def two_fresh_databases(create_migrated_database):
    first, second = await create_migrated_database(), await create_migrated_database()
    return first, second


async def test_cli_seed_and_seed_sql_give_identical_books(two_fresh_databases):
    via_cli, via_psql = two_fresh_databases
    for _ in range(2):  # twice: the second run must change nothing
        seeded = wallet_on(via_cli, "seed")
        assert seeded.returncode == 0, seeded.stderr
        subprocess.run(
            [psql_binary(), via_psql, "-q", "-v", "ON_ERROR_STOP=1", "-f", str(REPO_ROOT / "seed.sql")],
            check=True,
            timeout=120,
            capture_output=True,
        )

    cli_balances = await balances(via_cli)
    assert cli_balances == await balances(via_psql)
    expected = {
        (user_id, asset): amount for user_id, _, assets in DEMO_USERS for asset, amount in assets.items()
    }
    assert cli_balances == expected
    assert await counts(via_cli) == await counts(via_psql) == (6, 12, 6 + 3 * len(SystemAccount), 3)


async def test_seed_sql_refuses_an_unmigrated_database(create_database):
    empty = await create_database()
    result = subprocess.run(
        [psql_binary(), empty, "-q", "-f", str(REPO_ROOT / "seed.sql")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "wallet migrate" in result.stderr
