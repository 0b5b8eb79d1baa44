"""Small helpers shared by the tests."""

from __future__ import annotations

import uuid

import asyncpg
import httpx


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


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
