"""Change events: the feed every consumer reads (GET /api/v1/events, webhooks) and its retention.

Events are written in the same database transaction as what they describe: a posted transaction
(`transaction.posted`) by the posting core, in the statement that inserts it, as a reference to
the transaction (events.transaction_id, migration 0017; the feed renders its document from the
transaction, wallet_event_payload in db/sql/functions/70_events.sql); a hold placed, captured,
voided or expired (`hold.*`) by triggers, with its document (db/sql/0007_events.sql). The feed
is ordered by (txid, seq): the writing transaction, then the order of writing within it. A
reader only sees events whose transaction is older than every transaction of this database
still running (`txid < wallet_event_horizon()`, see db/sql/functions/70_events.sql), so an event
can never become visible behind a position a reader has already passed: the feed is gap-free for
every consumer. The price is latency: an event shows once every write transaction of this
database that was running when it committed has ended (milliseconds; bounded by the statement
and idle-in-transaction timeouts of the service's sessions, but not for other sessions: a long
writing transaction in psql or a migration holds the feed back until it ends). Transactions of
other databases on the same server do not count.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from wallet.domain.documents import ordered, render
from wallet.services.pagination import CursorList, decode_event_cursor, encode_numbers_cursor

# Whatever runs a query: the pool, or one connection (held, or from the pool).
Queryable = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy


class EventType(StrEnum):
    """The `type` of an event (the CHECK constraint of `events.type` lists the same)."""

    TRANSACTION_POSTED = "transaction.posted"
    HOLD_PLACED = "hold.placed"
    HOLD_CAPTURED = "hold.captured"
    HOLD_VOIDED = "hold.voided"
    HOLD_EXPIRED = "hold.expired"


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A place in the feed: after the event (txid, seq). Encoded as an opaque cursor."""

    txid: int
    seq: int

    def encode(self) -> str:
        return encode_numbers_cursor(CursorList.EVENTS, self.txid, self.seq)

    @classmethod
    def decode(cls, cursor: str | None, field: str = "after") -> Position | None:
        decoded = decode_event_cursor(cursor, field)
        return None if decoded is None else cls(*decoded)


START = Position(0, 0)  # before every event

# Events after a position that every reader may see, in feed order. `(txid, seq) > (...)` and
# `txid < horizon` are both bounds of the primary key's index scan.
PAGE_SQL = """
SELECT e.txid, e.seq, e.type, wallet_event_payload(e.type, e.payload, e.transaction_id)::text AS payload,
       to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at
FROM events e
WHERE (e.txid, e.seq) > ($1::xid8, $2::bigint)
  AND e.txid < wallet_event_horizon()
ORDER BY e.txid, e.seq
LIMIT $3
"""

# The position right after every event visible now: an event not visible yet belongs to a
# transaction at or above the horizon, so it comes after it.
HEAD_SQL = "SELECT wallet_event_horizon()"


@dataclass(frozen=True, slots=True)
class Event:
    position: Position
    type: str
    json: str  # the public document, exactly as served and as delivered to webhooks


def event_from_row(row: asyncpg.Record) -> Event:
    position = Position(int(row["txid"]), int(row["seq"]))
    document = {
        "id": position.seq,
        "type": row["type"],
        "created_at": row["created_at"],
        "cursor": position.encode(),
        "payload": orjson.Fragment(render(row["payload"])),
    }
    return Event(position, row["type"], orjson.dumps(ordered(document)).decode())


async def read_events(connection: Queryable, after: Position | None, limit: int) -> list[Event]:
    """Up to `limit` events after `after` (from the oldest kept when None), in feed order."""
    start = after or START
    rows = await connection.fetch(PAGE_SQL, start.txid, start.seq, limit)
    return [event_from_row(row) for row in rows]


async def head_position(connection: Queryable) -> Position:
    """After every event visible now; where a new webhook endpoint starts."""
    horizon = await connection.fetchval(HEAD_SQL)
    return Position(int(horizon), 0)


async def events_page_json(pool: asyncpg.Pool, after_cursor: str | None, limit: int) -> str:
    """GET /api/v1/events: `data` in feed order; `next_cursor` is where to continue (the last
    event's cursor, or the one given when there was nothing new); `has_more` says whether more
    events are visible already."""
    after = Position.decode(after_cursor)
    events = await read_events(pool, after, limit + 1)
    page = events[:limit]
    if page:
        next_cursor: str | None = page[-1].position.encode()
    else:
        next_cursor = after.encode() if after is not None else None
    return (
        '{"data":['
        + ",".join(e.json for e in page)
        + '],"next_cursor":'
        + orjson.dumps(next_cursor).decode()
        + ',"has_more":'
        + ("true" if len(events) > limit else "false")
        + "}"
    )


async def prune_events(
    connection: Queryable,
    older_than_hours: int,
    *,
    batch: int,
    max_batches: int = 1_000,
) -> int:
    """Deletes events older than `older_than_hours` from the start of the feed, `batch` per
    statement (each its own short transaction), at most `max_batches` statements; never an event a
    webhook endpoint has not got past yet. Returns how many were deleted."""
    if older_than_hours < 1 or batch < 1:
        raise ValueError("older_than_hours and batch must be at least 1")
    deleted = 0
    for _ in range(max_batches):
        count = await connection.fetchval(
            "SELECT wallet_prune_events(now() - make_interval(hours => $1), $2)", older_than_hours, batch
        )
        assert isinstance(count, int)
        deleted += count
        if count < batch:
            break
    return deleted
