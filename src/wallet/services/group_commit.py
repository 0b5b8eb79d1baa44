"""Group commit: single writes that arrive together are posted by one database call.

Each worker keeps a queue of pending top-ups, bonuses and spends (`wallet.services.batching`):
a write that arrives while fewer than `max_in_flight` groups are being posted is posted at once
with everything queued (up to `max_size`), so a lone request waits for nothing; when all are
busy, writes queue up and the next group takes them together: the busier the service, the larger
the groups, with no timer anywhere (TigerBeetle's batching, inside the service).

A group is one call of `wallet_post_group`: one round trip, one commit. Each write keeps its own
outcome and idempotency record; see that function for the lock order and the in-memory balance
pass. A write is answered only after the commit that holds it. Whatever the group call cannot
decide (a key held by a request in flight), and every write of a group whose call failed (a lock
timeout, an overflowing balance), is posted alone with `wallet_post_transaction`, so each gets
exactly the answer it would have got without grouping.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
from prometheus_client import Counter, Histogram

from wallet.services.batching import Batcher
from wallet.services.outcome import PostingOutcome

GROUP_SIZE = Histogram(
    "wallet_group_commit_size",
    "Writes posted by one group call (1 = posted alone at once)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
POSTED_ALONE_AFTER_GROUP = Counter(
    "wallet_group_commit_alone_total",
    "Writes a group could not decide or whose group call failed, then posted alone",
    ["reason"],
)

GROUP_SQL = (
    "SELECT ord, outcome, body::text AS body, replayed"
    " FROM wallet_post_group($1, $2, $3, $4, $5, $6, $7, $8::jsonb[], $9)"
)


@dataclass(frozen=True, slots=True)
class Write:
    """One single write, as the posting function takes it (limits already checked)."""

    api_key_id: int  # the client (see api_keys): idempotency records are kept under it
    idempotency_key: str
    type: str
    user_id: str
    asset_code: str
    amount_minor: int
    description: str | None
    metadata_json: str
    request_id: str | None = None  # stored with the transaction (X-Request-ID)


class GroupCommitter(Batcher[Write, PostingOutcome]):
    def __init__(self, pool: asyncpg.Pool, *, max_size: int, max_in_flight: int) -> None:
        super().__init__(max_size=max_size, max_in_flight=max_in_flight)
        self.pool = pool

    async def post(self, write: Write) -> PostingOutcome:
        """Posts `write`, grouped with whatever else is waiting; returns after its commit."""
        if self._max_size == 1:  # group commit off
            return await self._call_alone(write)
        # Shielded: a client that disconnects does not cancel a write that may be committing.
        return await asyncio.shield(self.submit(write))

    async def serve(self, group: list[tuple[Write, asyncio.Future[PostingOutcome]]]) -> None:
        GROUP_SIZE.observe(len(group))
        if len(group) == 1:
            await self._post_alone(*group[0])
            return
        try:
            rows = await self._post_group([w for w, _ in group])
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            # Nothing of the group was written: each write is posted alone and gets its own
            # answer (or error), exactly as without grouping.
            POSTED_ALONE_AFTER_GROUP.labels(type(exc).__name__).inc(len(group))
            await asyncio.gather(*(self._post_alone(w, f) for w, f in group))
            return
        undecided = []
        for (write, future), row in zip(group, rows, strict=True):
            if row["outcome"] is None:
                undecided.append((write, future))
            elif not future.done():
                future.set_result(PostingOutcome.of_row(row))
        if undecided:
            POSTED_ALONE_AFTER_GROUP.labels("undecided").inc(len(undecided))
            for write, future in undecided:  # in arrival order: repeats of a key after the first
                await self._post_alone(write, future)

    async def _post_group(self, writes: list[Write]) -> list[asyncpg.Record]:
        rows = await self.pool.fetch(
            GROUP_SQL,
            [w.api_key_id for w in writes],
            [w.idempotency_key for w in writes],
            [w.type for w in writes],
            [w.user_id for w in writes],
            [w.asset_code for w in writes],
            [w.amount_minor for w in writes],
            [w.description for w in writes],
            [w.metadata_json for w in writes],
            [w.request_id for w in writes],
        )
        assert [r["ord"] for r in rows] == list(range(1, len(writes) + 1))
        return rows

    async def _call_alone(self, write: Write) -> PostingOutcome:
        return await PostingOutcome.call(
            self.pool,
            "wallet_post_transaction($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9)",
            write.api_key_id,
            write.idempotency_key,
            write.type,
            write.user_id,
            write.asset_code,
            write.amount_minor,
            write.description,
            write.metadata_json,
            write.request_id,
        )

    async def _post_alone(self, write: Write, future: asyncio.Future[PostingOutcome]) -> None:
        try:
            posted = await self._call_alone(write)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        if not future.done():
            future.set_result(posted)
