"""Small helpers shared by the tests."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import httpx

from wallet.services.verify import VerifyReport, verify_ledger


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def verify_books(database_url: str) -> VerifyReport:
    """`wallet verify`'s checks of the whole database, on a connection of their own."""
    conn = await asyncpg.connect(database_url)
    try:
        return await verify_ledger(conn)
    finally:
        await conn.close()


async def balance_of(client: httpx.AsyncClient, user_id: str, asset_code: str = "GOLD_COINS") -> int:
    response = await client.get(f"/api/v1/wallets/{user_id}/balance")
    assert response.status_code == 200, response.text
    by_asset = {b["asset_type"]: b["balance"] for b in response.json()["balances"]}
    return by_asset[asset_code]


async def ledger_counts(pool: asyncpg.Pool) -> tuple[int, int, int]:
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM transactions), (SELECT count(*) FROM ledger_entries),"
        " (SELECT count(*) FROM idempotency_keys)"
    )
    assert row is not None
    return row[0], row[1], row[2]


def new_key() -> str:
    return f"k-{uuid.uuid4().hex}"


async def post(http, kind: str, expect: int = 201, **body: Any) -> dict[str, Any]:
    response = await http.post(
        f"/api/v1/transactions/{kind}", headers={"Idempotency-Key": new_key()}, json=body
    )
    assert response.status_code == expect, response.text
    return response.json()


async def asset_balance(http, user: str, asset: str) -> dict[str, Any]:
    response = await http.get(f"/api/v1/wallets/{user}/balance", params={"asset_type": asset})
    assert response.status_code == 200, response.text
    (only,) = response.json()["balances"]
    return only


async def db_now(pool) -> datetime:
    now = await pool.fetchval("SELECT clock_timestamp()")
    assert isinstance(now, datetime)
    return now


async def wait_past(pool, instant: datetime) -> None:
    """Until the database's clock has passed `instant` (the clock expiry is judged by)."""
    while await db_now(pool) <= instant:
        await asyncio.sleep(0.05)
