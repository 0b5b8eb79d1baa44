"""Balance reads that arrive together are answered by one query: group commit, for reads.

A balance read is a short statement; at load most of its cost is the statement itself (a round
trip, a pool checkout, the executor's start-up) rather than the few index probes it makes. Each
worker queues its pending reads of a user's balances (now, every asset: the hot route's common
case) as group commit queues writes (`wallet.services.batching`): a read that arrives while fewer
than `max_in_flight` queries are running is read at once with everything queued (up to
`max_size`) by one statement; otherwise it waits for the next, so the busier the worker, the more
reads share a statement, and a lone read waits for nothing.

No read is answered from an older snapshot than its own: a read waits for a query that starts
after it arrived, so it sees every write acknowledged before it was asked (a write is
acknowledged only after its commit).
"""

from __future__ import annotations

import asyncio

import asyncpg
from prometheus_client import Histogram

from wallet.services.batching import Batcher
from wallet.services.wallets import BALANCES_OF_USERS_SQL

READS_PER_QUERY = Histogram(
    "wallet_balance_reads_per_query",
    "Balance reads answered by one query (1 = alone)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)


class BalanceReader(Batcher[str, str | None]):
    def __init__(self, pool: asyncpg.Pool, *, max_size: int, max_in_flight: int) -> None:
        super().__init__(max_size=max_size, max_in_flight=max_in_flight)
        self.pool = pool

    async def read(self, user_id: str) -> str | None:
        """The user's balances document (JSON), or None for an unknown user."""
        return await self.submit(user_id)

    async def serve(self, reads: list[tuple[str, asyncio.Future[str | None]]]) -> None:
        READS_PER_QUERY.observe(len(reads))
        try:
            bodies = await self._fetch([user_id for user_id, _ in reads])
        except Exception:
            if len(reads) == 1:
                raise
            # One read's input can fail the statement (or a connection fails): each is read
            # again alone, so a read fails only for a reason of its own.
            await asyncio.gather(*(self._read_alone(read) for read in reads))
            return
        for (_, future), body in zip(reads, bodies, strict=True):
            if not future.done():  # (a caller that went away cancelled its future)
                future.set_result(body)

    async def _fetch(self, user_ids: list[str]) -> list[str | None]:
        rows = await self.pool.fetch(BALANCES_OF_USERS_SQL, user_ids)
        assert [r["n"] for r in rows] == list(range(1, len(user_ids) + 1))
        return [r["body"] for r in rows]

    async def _read_alone(self, read: tuple[str, asyncio.Future[str | None]]) -> None:
        user_id, future = read
        try:
            (body,) = await self._fetch([user_id])
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(body)
