"""`python -m tools.cluster_measure`: top-ups/s, balance reads/s, WAL and table bytes per write, and
the replica's lag, 15 s each from 16 clients against `wallet serve --workers 2`, on the cluster of
`make cluster-up` (migrated and seeded) or on any database (M_PRIMARY, M_REPLICA). The figures of
docs/SCALING.md. WAL is counted server-wide: on a shared server other databases' writes count too.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import asyncpg
import httpx

from tools.service_process import ServiceProcess
from wallet.db.pool import REPLICA_LAG_SQL
from wallet.services.api_keys import create_api_key

PRIMARY = os.environ.get("M_PRIMARY", "postgresql://postgres@127.0.0.1:15430/wallet")
REPLICA = os.environ.get("M_REPLICA", "postgresql://postgres@127.0.0.1:15431/wallet")
CLIENTS = 16
SECONDS = 15
SIZE_SQL = (
    "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'm')"
)


async def _client(http: httpx.AsyncClient, phase: str, user: str, end: float) -> int:
    done = 0
    while time.monotonic() < end:
        if phase == "writes":
            response = await http.post(
                "/api/v1/transactions/topup",
                json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 1},
                headers={"Idempotency-Key": uuid.uuid4().hex},
            )
        else:
            response = await http.get(f"/api/v1/wallets/{user}/balance")
        assert response.status_code in (200, 201), response.text
        done += 1
    return done


async def _lag(replica: asyncpg.Connection, end: float, lags: list[float]) -> int:
    while time.monotonic() < end:
        lags.append(float(await replica.fetchval(REPLICA_LAG_SQL)))
        await asyncio.sleep(0.5)
    return 0


async def main() -> None:
    conn = await asyncpg.connect(PRIMARY)
    users = [f"m_{i:03d}" for i in range(CLIENTS)]
    for user in users:
        await conn.execute("SELECT wallet_ensure_user($1, 'M')", user)
    token = await create_api_key(conn, f"measure-{uuid.uuid4().hex[:6]}", ["read", "credit"])
    service = ServiceProcess(
        {"WALLET_DATABASE_URL": PRIMARY, "WALLET_LOG_LEVEL": "WARNING", "WALLET_ACCESS_LOG": "0"}, workers=2
    )
    await asyncio.to_thread(service.start)
    replica = await asyncpg.connect(REPLICA)
    lags: list[float] = []
    try:
        async with httpx.AsyncClient(
            base_url=service.base_url,
            headers={"Authorization": f"Bearer {token}"},
            limits=httpx.Limits(max_connections=CLIENTS),
        ) as http:
            for phase in ("writes", "reads"):
                lsn = await conn.fetchval("SELECT pg_current_wal_lsn()")
                size = await conn.fetchval(SIZE_SQL)
                started = time.monotonic()
                end = started + SECONDS
                counts = await asyncio.gather(
                    *(_client(http, phase, user, end) for user in users), _lag(replica, end, lags)
                )
                elapsed = time.monotonic() - started
                done = max(1, sum(counts))
                wal = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", lsn)
                grown = await conn.fetchval(SIZE_SQL) - size
                print(
                    f"{phase}: {done} in {elapsed:.1f} s = {done / elapsed:.0f}/s;"
                    f" WAL {wal / done:.0f} B per op; tables and indexes {grown / done:.0f} B per op"
                )
        print(
            f"replica lag: max {max(lags):.3f} s, mean {sum(lags) / len(lags):.3f} s over {len(lags)} samples"
        )
    finally:
        service.stop()
        await conn.close()
        await replica.close()


if __name__ == "__main__":
    asyncio.run(main())
