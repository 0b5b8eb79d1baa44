"""Expiry of credit lots against real PostgreSQL: every lot expires once, whoever runs the expiry
and however many at once, and spends racing the expiry never draw credits twice."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import timedelta

from tests.support import asset_balance, db_now, new_key, post, wait_past
from wallet.services.lots import expire_due
from wallet.services.verify import verify_ledger

TX = "/api/v1/transactions"


async def _breakage(pool, asset: str) -> int:
    return await pool.fetchval(
        "SELECT coalesce(sum(e.amount_minor), 0) FROM ledger_entries e JOIN accounts a ON a.id = e.account_id"
        " WHERE a.system_code = 'SYSTEM_BREAKAGE' AND a.asset_code = $1",
        asset,
    )


async def _expiring_users(admin, pool, make_user, asset: str, n: int, amount: int):
    users = [await make_user() for _ in range(n)]
    for user in users:
        await post(admin, "topup", user_id=user, asset_type=asset, amount=7)
    # Only the bonuses are posted inside the window (a bonus must expire at least 1 s ahead), with
    # room for a loaded machine: the users and top-ups had pushed the last bonuses past it.
    at = (await db_now(pool)) + timedelta(seconds=1.5 + 0.1 * n)
    for user in users:
        await post(admin, "bonus", user_id=user, asset_type=asset, amount=amount, expires_at=at.isoformat())
    await wait_past(pool, at)
    return users


async def test_two_expiry_runs_at_once_expire_each_lot_once(
    admin, client, pool, settings, make_user, lot_asset
):
    asset = await lot_asset()
    users = await _expiring_users(admin, pool, make_user, asset, 12, 25)
    small = settings.model_copy(update={"lot_expiry_accounts_per_transaction": 3})
    first, second = await asyncio.gather(expire_due(pool, small), expire_due(pool, small))
    assert first.expired_minor + second.expired_minor == 12 * 25
    assert (await expire_due(pool, small)).expired_minor == 0  # nothing left: a third run does nothing
    assert await _breakage(pool, asset) == 12 * 25
    for user in users:
        balance = await asset_balance(client, user, asset)
        assert (balance["balance"], balance["granted"], balance["purchased"]) == (7, 0, 7)
    drawn_twice = await pool.fetchval(
        "SELECT count(*) FROM (SELECT m.lot_id FROM lot_movements m JOIN transactions t ON t.id = m.transaction_id"
        " WHERE t.type = 'expiry' AND t.asset_code = $1 GROUP BY m.lot_id HAVING count(*) > 1) x",
        asset,
    )
    assert drawn_twice == 0


async def test_wallet_expire_twice_in_two_processes(admin, pool, settings, make_user, lot_asset):
    asset = await lot_asset()
    await _expiring_users(admin, pool, make_user, asset, 6, 10)
    env = os.environ | {"WALLET_DATABASE_URL": settings.database_url}
    # The commands write the policies of their own settings: give them this test's too.
    env["WALLET_LOT_POLICIES"] = await pool.fetchval(
        "SELECT jsonb_object_agg(asset_code, jsonb_build_object('spend_order', spend_order,"
        " 'purchased_expires_in_seconds', purchased_expires_in_seconds,"
        " 'granted_expires_in_seconds', granted_expires_in_seconds)) FROM asset_lot_policies"
    )
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "wallet", "expire"], env=env, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert all("expired" in out for out in outputs), outputs
    assert await _breakage(pool, asset) == 6 * 10


async def test_spends_racing_the_expiry_never_take_more_than_the_lot(
    admin, client, pool, settings, make_user, lot_asset
):
    asset = await lot_asset()
    user = await make_user()
    at = (await db_now(pool)) + timedelta(seconds=1.2)
    await post(admin, "bonus", user_id=user, asset_type=asset, amount=100, expires_at=at.isoformat())

    async def spend_until_refused() -> tuple[int, int]:
        posted = refused = 0
        while refused < 3:
            response = await client.post(
                f"{TX}/spend",
                headers={"Idempotency-Key": new_key()},
                json={"user_id": user, "asset_type": asset, "amount": 3},
            )
            assert response.status_code in (201, 409), response.text
            if response.status_code == 201:
                posted += 1
            else:
                refused += 1
            await asyncio.sleep(0.02)
        return posted, refused

    async def expire_repeatedly() -> int:
        expired = 0
        for _ in range(30):
            expired += (await expire_due(pool, settings)).expired_minor
            await asyncio.sleep(0.05)
        return expired

    results = await asyncio.gather(*(spend_until_refused() for _ in range(6)), expire_repeatedly())
    spent = 3 * sum(posted for posted, _ in results[:-1])
    expired = await pool.fetchval(
        "SELECT coalesce(sum(amount_minor), 0) FROM transactions WHERE user_id = $1 AND type = 'expiry'", user
    )
    balance = await asset_balance(client, user, asset)
    assert balance["balance"] == 0 and spent + expired == 100, (spent, expired)
    assert expired > 0  # the lot did expire with credits left (spends were paced to leave some)
    # No spend was stamped after the instant its lot expired.
    late = await pool.fetchval(
        "SELECT count(*) FROM transactions WHERE user_id = $1 AND type = 'spend' AND created_at > $2",
        user,
        at,
    )
    assert late == 0
    async with pool.acquire() as conn:
        report = await verify_ledger(conn)
    assert report.clean, report.render()
