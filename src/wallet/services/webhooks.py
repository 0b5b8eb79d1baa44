"""Webhooks: the event feed pushed to registered URLs, signed, at least once, in order per endpoint.

Each endpoint has its own position in the feed (see wallet.services.events). Every worker of
`wallet serve` runs a `Deliverer`: every WALLET_WEBHOOK_POLL_INTERVAL_MS it looks for active
endpoints with events after their position whose backoff has passed, and delivers to each in a
task of its own. Before delivering to an endpoint a task takes a session advisory lock on it
(`pg_try_advisory_lock`, on a connection of the deliverer's own small pool held for the turn): one
process at a time delivers to one endpoint, whatever the number of workers and instances, and
the others skip it. Under the lock the task re-reads the endpoint's position, then posts the
events after it one at a time, in feed order:

* a 2xx answer moves the position past the event (in the database, only after the answer: at
  least once; a crash between the two sends that event again, so receivers dedupe on
  `X-Wallet-Event-Id`);
* anything else (an error status, a refused connection, a timeout of WALLET_WEBHOOK_TIMEOUT_MS)
  is a failed attempt: the endpoint waits an exponential backoff with jitter
  (WALLET_WEBHOOK_BACKOFF_BASE_MS doubling up to WALLET_WEBHOOK_BACKOFF_CAP_MS, then a random
  half to all of it) and the same event is tried again;
* after WALLET_WEBHOOK_MAX_ATTEMPTS failed attempts the event is dead-lettered for that endpoint
  (a row with the exact body, visible through the API, redeliverable) and delivery moves on to
  the next event. Strict order is traded for progress here: a receiver that refuses one event
  for good does not stop every later one.

Every update of the endpoint's row is a compare-and-set on the position the task read under the
lock, on the lock's own connection: a task that lost its connection (and so its lock) cannot move
the position.

A request is `POST <url>` with the event document as body, signed per the Standard Webhooks
specification (https://www.standardwebhooks.com/), so receivers verify it with the existing
libraries: `webhook-id` (the event's id, the same on every attempt), `webhook-timestamp` (Unix
seconds) and `webhook-signature: v1,<base64 HMAC-SHA256(key, id + "." + timestamp + "." + body)>`,
the key being the bytes the endpoint's `whsec_<base64>` secret encodes (`signing_key`).

Deprecated, sent alongside for one release: `X-Wallet-Event-Id`, `X-Wallet-Event-Type`,
`X-Wallet-Timestamp` and `X-Wallet-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." +
body)>`, keyed by the secret's text.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import random
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import orjson
import structlog
from asyncpg.pool import PoolConnectionProxy
from prometheus_client import Counter

from wallet import __version__
from wallet.db.pool import create_session_pool
from wallet.domain import errors
from wallet.domain.documents import ordered
from wallet.domain.errors import WalletError
from wallet.services.events import PAGE_SQL as EVENTS_PAGE_SQL
from wallet.services.events import Event, EventType, Position, event_from_row, head_position
from wallet.services.pagination import CursorList, decode_int_cursor, encode_int_cursor
from wallet.settings import Settings

log = structlog.get_logger("wallet.webhooks")

# Standard Webhooks.
WEBHOOK_ID_HEADER = "webhook-id"
WEBHOOK_TIMESTAMP_HEADER = "webhook-timestamp"
WEBHOOK_SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"
# Deprecated: sent alongside the Standard Webhooks headers for one release (CHANGELOG.md).
SIGNATURE_HEADER = "X-Wallet-Signature"
TIMESTAMP_HEADER = "X-Wallet-Timestamp"
EVENT_ID_HEADER = "X-Wallet-Event-Id"
EVENT_TYPE_HEADER = "X-Wallet-Event-Type"

# The advisory lock of endpoint N is (LOCK_SPACE, N): the two-key form, a lock space apart from
# the one-key locks the posting functions take on idempotency keys.
LOCK_SPACE = 0x57_48_4B_01  # "WHK", 1
URL_MAX_CHARS = 2048
ERROR_MAX_CHARS = 1000
# last_error of an attempt that got no HTTP answer, whatever the reason (see Deliverer._post).
NO_HTTP_ANSWER = "no HTTP answer (could not connect, or no valid answer within {} ms)"
_HTTP_STATUS_ERROR = re.compile(r"HTTP \d{3}")


def public_error(stored: str | None) -> str | None:
    """What the admin API shows of a stored last_error: its category. Rows written before there
    were categories hold an exception's text; they read as "no HTTP answer"."""
    if stored is None or _HTTP_STATUS_ERROR.fullmatch(stored) or stored.startswith("no HTTP answer"):
        return stored
    return "no HTTP answer"


REDELIVERIES_PER_TURN = 20

DELIVERIES = Counter(
    "wallet_webhook_deliveries_total",
    "Webhook delivery attempts by result: delivered, failed (will be retried), dead_lettered.",
    ["result"],
)


def signing_key(secret: str) -> bytes:
    """The HMAC key of the Standard Webhooks signature: the bytes the secret's base64 encodes.
    Secrets are `whsec_` + standard base64 since Standard Webhooks signing; those created before
    are `whsec_` + URL-safe base64 (no padding) of 32 random bytes, read here with that alphabet
    (the two differ only in `-_` / `+/`), so both kinds sign with the same key they were made
    from. (A receiver gives a library an older secret in the standard alphabet: `-` as `+`, `_`
    as `/`, see the README.)"""
    text = secret.removeprefix(SECRET_PREFIX).translate(_URL_SAFE_TO_STANDARD)
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


_URL_SAFE_TO_STANDARD = str.maketrans("-_", "+/")


def sign_standard(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> str:
    """The `webhook-signature` value of a request (Standard Webhooks, version 1)."""
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Wallet-Signature value of a request (deprecated)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance_s: int = 300,
    now: float | None = None,
) -> bool:
    """What a receiver checks: the signature, and that the timestamp is recent (no replays of old
    requests). Constant-time comparison."""
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def backoff_ms(attempts: int, settings: Settings) -> float:
    """The wait after the `attempts`-th failed attempt at an event: base * 2^(attempts - 1),
    capped, then a random half to all of it (so endpoints that failed together retry apart)."""
    exponent = min(max(attempts - 1, 0), 40)
    delay: float = min(settings.webhook_backoff_cap_ms, settings.webhook_backoff_base_ms * 2**exponent)
    return delay / 2 + random.uniform(0, delay / 2)


# --- Endpoints (the admin API) -------------------------------------------------------------------

ENDPOINT_SQL = """
SELECT w.id, w.url, w.event_types, w.description, w.active,
       to_char(w.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at,
       w.cursor_txid, w.cursor_seq, w.attempts, w.delivered_count,
       to_char(w.next_attempt_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS next_attempt_at,
       to_char(w.last_attempt_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS last_attempt_at,
       to_char(w.last_success_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS last_success_at,
       w.last_error,
       (SELECT count(*) FROM webhook_dead_letters d WHERE d.endpoint_id = w.id AND d.status <> 'redelivered')
           AS dead_letters
FROM webhook_endpoints w
"""


def _endpoint(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "url": row["url"],
        "event_types": row["event_types"],
        "description": row["description"],
        "active": row["active"],
        "created_at": row["created_at"],
        "delivery": {
            "cursor": Position(int(row["cursor_txid"]), row["cursor_seq"]).encode(),
            "attempts": row["attempts"],
            "next_attempt_at": row["next_attempt_at"],
            "last_attempt_at": row["last_attempt_at"],
            "last_success_at": row["last_success_at"],
            "last_error": public_error(row["last_error"]),
            "delivered": row["delivered_count"],
            "dead_letters": row["dead_letters"],
        },
    }


def _not_found(endpoint_id: int) -> WalletError:
    return WalletError(errors.WEBHOOK_NOT_FOUND, f"no webhook endpoint with id {endpoint_id}")


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + standard base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


async def create_endpoint(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    url: str,
    event_types: list[EventType] | None,
    description: str | None,
) -> dict[str, Any]:
    """Registers an endpoint that gets every event from now on (those visible at this moment are
    not sent). The answer is the only one that shows the signing secret. The request is valid
    (wallet.api.schemas_events.WebhookCreate: an http or https URL of at most URL_MAX_CHARS as
    normalised, a description PostgreSQL can store); the number of endpoints is checked here."""
    types = sorted({t.value for t in event_types}) if event_types else None
    secret = new_secret()
    async with pool.acquire() as conn, conn.transaction():
        # Serialises registrations, so the limit holds under concurrent ones.
        await conn.execute("LOCK TABLE webhook_endpoints IN SHARE ROW EXCLUSIVE MODE")
        count = await conn.fetchval("SELECT count(*) FROM webhook_endpoints")
        if count >= settings.webhook_max_endpoints:
            raise WalletError(
                errors.LIMIT_EXCEEDED,
                f"at most {settings.webhook_max_endpoints} webhook endpoints (WALLET_WEBHOOK_MAX_ENDPOINTS)",
                "url",
            )
        start = await head_position(conn)
        endpoint_id = await conn.fetchval(
            "INSERT INTO webhook_endpoints (url, secret, event_types, description, cursor_txid, cursor_seq)"
            " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            url,
            secret,
            types,
            description,
            start.txid,
            start.seq,
        )
        row = await conn.fetchrow(ENDPOINT_SQL + " WHERE w.id = $1", endpoint_id)
    assert row is not None
    return {**_endpoint(row), "secret": secret}


async def list_endpoints(pool: asyncpg.Pool) -> dict[str, Any]:
    rows = await pool.fetch(ENDPOINT_SQL + " ORDER BY w.id")
    return {"data": [_endpoint(r) for r in rows]}


async def get_endpoint(pool: asyncpg.Pool, endpoint_id: int) -> dict[str, Any]:
    row = await pool.fetchrow(ENDPOINT_SQL + " WHERE w.id = $1", endpoint_id)
    if row is None:
        raise _not_found(endpoint_id)
    return _endpoint(row)


async def set_endpoint_active(pool: asyncpg.Pool, endpoint_id: int, active: bool) -> dict[str, Any]:
    """Pauses (false) or resumes (true) deliveries; a paused endpoint keeps its position."""
    updated = await pool.fetchval(
        "UPDATE webhook_endpoints SET active = $2, next_attempt_at = CASE WHEN $2 THEN now()"
        " ELSE next_attempt_at END WHERE id = $1 RETURNING id",
        endpoint_id,
        active,
    )
    if updated is None:
        raise _not_found(endpoint_id)
    return await get_endpoint(pool, endpoint_id)


async def delete_endpoint(pool: asyncpg.Pool, endpoint_id: int) -> None:
    """Removes the endpoint and its dead letters. A delivery in flight finishes, and moves nothing."""
    deleted = await pool.fetchval("DELETE FROM webhook_endpoints WHERE id = $1 RETURNING id", endpoint_id)
    if deleted is None:
        raise _not_found(endpoint_id)


DEAD_LETTERS_SQL = """
SELECT d.id, d.event_id, d.event_type, d.body, d.attempts, d.last_error, d.status,
       to_char(d.dead_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS dead_at,
       to_char(d.redelivered_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS redelivered_at
FROM webhook_dead_letters d
"""


def _dead_letter_json(row: asyncpg.Record) -> str:
    """A dead letter in the documented key order, its `event` the body as it was sent (and will
    be sent again), verbatim."""
    return orjson.dumps(
        ordered(
            {
                "id": row["id"],
                "event_id": row["event_id"],
                "event_type": row["event_type"],
                "attempts": row["attempts"],
                "last_error": public_error(row["last_error"]),
                "status": row["status"],
                "dead_at": row["dead_at"],
                "redelivered_at": row["redelivered_at"],
                "event": orjson.Fragment(row["body"]),
            }
        )
    ).decode()


async def list_dead_letters_json(
    pool: asyncpg.Pool, endpoint_id: int, *, limit: int, cursor: str | None
) -> str:
    """The endpoint's dead letters, newest first."""
    before_id = decode_int_cursor(CursorList.DEAD_LETTERS, cursor, scope=str(endpoint_id))
    rows = await pool.fetch(
        DEAD_LETTERS_SQL + " WHERE d.endpoint_id = $1 AND ($2::bigint IS NULL OR d.id < $2)"
        " ORDER BY d.id DESC LIMIT $3",
        endpoint_id,
        before_id,
        limit + 1,
    )
    if not rows and await pool.fetchval("SELECT 1 FROM webhook_endpoints WHERE id = $1", endpoint_id) is None:
        raise _not_found(endpoint_id)
    page = rows[:limit]
    next_cursor = (
        encode_int_cursor(CursorList.DEAD_LETTERS, page[-1]["id"], scope=str(endpoint_id))
        if len(rows) > limit
        else None
    )
    return (
        '{"data":['
        + ",".join(_dead_letter_json(r) for r in page)
        + '],"next_cursor":'
        + orjson.dumps(next_cursor).decode()
        + "}"
    )


async def request_redelivery_json(pool: asyncpg.Pool, endpoint_id: int, dead_letter_id: int) -> str:
    """Marks a dead letter for one more attempt, made by the next turn of the endpoint's deliverer
    before the events after its position (out of feed order, by nature)."""
    async with pool.acquire() as conn, conn.transaction():
        updated = await conn.fetchval(
            "UPDATE webhook_dead_letters SET status = 'redeliver', redelivered_at = NULL"
            " WHERE id = $1 AND endpoint_id = $2 RETURNING id",
            dead_letter_id,
            endpoint_id,
        )
        if updated is None:
            if await conn.fetchval("SELECT 1 FROM webhook_endpoints WHERE id = $1", endpoint_id) is None:
                raise _not_found(endpoint_id)
            raise WalletError(
                errors.DEAD_LETTER_NOT_FOUND,
                f"webhook endpoint {endpoint_id} has no dead letter with id {dead_letter_id}",
            )
        row = await conn.fetchrow(DEAD_LETTERS_SQL + " WHERE d.id = $1", dead_letter_id)
    assert row is not None
    return _dead_letter_json(row)


# --- Delivery ------------------------------------------------------------------------------------

DUE_SQL = """
WITH horizon AS MATERIALIZED (SELECT wallet_event_horizon() AS txid)
SELECT w.id FROM webhook_endpoints w, horizon h
WHERE w.active AND w.next_attempt_at <= now()
  AND (EXISTS (SELECT 1 FROM events e
               WHERE (e.txid, e.seq) > (w.cursor_txid, w.cursor_seq)
                 AND e.txid < h.txid)
       OR EXISTS (SELECT 1 FROM webhook_dead_letters d WHERE d.endpoint_id = w.id AND d.status = 'redeliver'))
ORDER BY w.next_attempt_at
LIMIT $1
"""

LOCKED_ENDPOINT_SQL = """
SELECT url, secret, event_types, cursor_txid, cursor_seq, attempts
FROM webhook_endpoints WHERE id = $1 AND active AND next_attempt_at <= now()
"""

# Every change of an endpoint's delivery state is conditional on the position read under the
# lock ($2, $3): a stale task changes nothing.
DELIVERED_SQL = """
UPDATE webhook_endpoints
   SET cursor_txid = $4, cursor_seq = $5, attempts = 0, next_attempt_at = now(), last_error = NULL,
       last_attempt_at = CASE WHEN $6 THEN now() ELSE last_attempt_at END,
       last_success_at = CASE WHEN $6 THEN now() ELSE last_success_at END,
       delivered_count = delivered_count + $6::boolean::int
 WHERE id = $1 AND cursor_txid = $2 AND cursor_seq = $3
RETURNING id
"""
FAILED_SQL = """
UPDATE webhook_endpoints
   SET attempts = $4, last_error = $5, last_attempt_at = now(),
       next_attempt_at = now() + make_interval(secs => $6::double precision / 1000)
 WHERE id = $1 AND cursor_txid = $2 AND cursor_seq = $3
RETURNING id
"""
DEAD_LETTERED_SQL = """
UPDATE webhook_endpoints
   SET cursor_txid = $4, cursor_seq = $5, attempts = 0, next_attempt_at = now(), last_error = $6,
       last_attempt_at = now()
 WHERE id = $1 AND cursor_txid = $2 AND cursor_seq = $3
RETURNING id
"""
INSERT_DEAD_LETTER_SQL = """
INSERT INTO webhook_dead_letters (endpoint_id, event_id, event_type, body, attempts, last_error)
VALUES ($1, $2, $3, $4, $5, $6)
"""


@dataclass(frozen=True, slots=True)
class Attempt:
    ok: bool
    error: str | None = None


class Deliverer:
    """Delivers events to webhook endpoints; one per worker process (see the module docstring)."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, database_url: str) -> None:
        self._pool = pool
        self._settings = settings
        self._database_url = database_url
        self._lock_pool: asyncpg.Pool | None = None
        self._client: httpx.AsyncClient | None = None
        self._running: dict[int, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        # Turns taken, and turns given up because another process held the endpoint's lock.
        self.turns = 0
        self.turns_skipped = 0

    # The lock connections come from a pool of their own, with asyncpg's default reset (which
    # releases session advisory locks): the service's pool skips that reset, and a lock left on
    # one of its connections would keep the endpoint from every other process.
    async def _locks(self) -> asyncpg.Pool:
        if self._lock_pool is None:
            # On WALLET_DIRECT_DATABASE_URL when set: a session lock through a transaction-mode
            # pooler would be held by whichever server connection ran the statement.
            pool = await create_session_pool(self._settings, self._database_url, "wallet-webhooks")
            assert pool is not None
            self._lock_pool = pool
        return self._lock_pool

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            timeout_s = self._settings.webhook_timeout_ms / 1000
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(timeout_s),
                follow_redirects=False,
                trust_env=False,  # straight to the URL registered, whatever proxy variables say
                headers={"User-Agent": f"wallet-webhooks/{__version__}"},
            )
        return self._client

    def start(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stops polling and cancels deliveries in flight (their events are sent again later)."""
        tasks = [t for t in (self._loop_task, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loop_task = None
        self._running.clear()

    async def close(self) -> None:
        await self.stop()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._lock_pool is not None:
            await self._lock_pool.close()
            self._lock_pool = None

    async def _run(self) -> None:
        interval_s = self._settings.webhook_poll_interval_ms / 1000
        while True:
            try:
                await self.poll()
            except Exception as exc:  # the next poll tries again
                log.warning("webhook_poll_failed", error=type(exc).__name__, detail=str(exc)[:200])
            await asyncio.sleep(interval_s)

    async def poll(self) -> list[int]:
        """Starts a delivery task for each due endpoint this process is not delivering to yet;
        returns their ids."""
        free = self._settings.webhook_max_concurrency - len(self._running)
        if free <= 0:
            return []
        due = [r["id"] for r in await self._pool.fetch(DUE_SQL, free + len(self._running))]
        started = []
        for endpoint_id in due:
            if endpoint_id in self._running or len(self._running) >= self._settings.webhook_max_concurrency:
                continue
            task = asyncio.create_task(self._turn(endpoint_id))
            self._running[endpoint_id] = task
            task.add_done_callback(self._forget)
            started.append(endpoint_id)
        return started

    def _forget(self, task: asyncio.Task[None]) -> None:
        for endpoint_id, running in list(self._running.items()):
            if running is task:
                del self._running[endpoint_id]

    async def run_until_idle(self, timeout_s: float = 60) -> None:
        """Polls and waits for the deliveries it started until nothing is due (for tests and tools)."""
        async with asyncio.timeout(timeout_s):
            while True:
                started = await self.poll()
                running = list(self._running.values())
                if not started and not running:
                    return
                if running:
                    await asyncio.wait(running)

    async def _turn(self, endpoint_id: int) -> None:
        try:
            locks = await self._locks()
            async with locks.acquire() as conn:
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_SPACE, endpoint_id):
                    self.turns_skipped += 1
                    return  # another process is delivering to it
                self.turns += 1
                try:
                    await self._deliver(conn, endpoint_id)
                finally:
                    with contextlib.suppress(Exception):
                        await conn.execute("SELECT pg_advisory_unlock($1, $2)", LOCK_SPACE, endpoint_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the endpoint is due again at the next poll
            log.warning("webhook_turn_failed", endpoint_id=endpoint_id, error=type(exc).__name__)

    async def _deliver(self, conn: PoolConnectionProxy, endpoint_id: int) -> None:
        endpoint = await conn.fetchrow(LOCKED_ENDPOINT_SQL, endpoint_id)
        if endpoint is None:
            return  # deleted, paused, or another process failed on it and is backing off
        url: str = endpoint["url"]
        secret: str = endpoint["secret"]
        wanted = set(endpoint["event_types"]) if endpoint["event_types"] else None
        await self._redeliver(conn, endpoint_id, url, secret)

        stored = Position(int(endpoint["cursor_txid"]), endpoint["cursor_seq"])  # as in the database
        position = stored  # how far this turn got (events passed over are stored with the next move)
        attempts: int = endpoint["attempts"]
        budget = self._settings.webhook_events_per_turn
        while budget > 0:
            rows = await conn.fetch(EVENTS_PAGE_SQL, position.txid, position.seq, min(budget, 500))
            if not rows:
                break
            for row in rows:
                event = event_from_row(row)
                if wanted is not None and event.type not in wanted:
                    position = event.position
                    continue
                budget -= 1
                result = await self._post(url, secret, event)
                if result.ok:
                    DELIVERIES.labels("delivered").inc()
                    if not await self._move(conn, endpoint_id, stored, event.position, delivered=True):
                        return
                    stored = position = event.position
                    attempts = 0
                else:
                    attempts += 1
                    error = (result.error or "failed")[:ERROR_MAX_CHARS]
                    if attempts < self._settings.webhook_max_attempts:
                        await self._back_off(conn, endpoint_id, stored, event, attempts, error)
                        return
                    if not await self._dead_letter(conn, endpoint_id, stored, event, attempts, error):
                        return
                    stored = position = event.position
                    attempts = 0
                if budget <= 0:
                    break
        if position != stored:
            await self._move(conn, endpoint_id, stored, position, delivered=False)

    async def _back_off(
        self,
        conn: PoolConnectionProxy,
        endpoint_id: int,
        stored: Position,
        event: Event,
        attempts: int,
        error: str,
    ) -> None:
        DELIVERIES.labels("failed").inc()
        wait_ms = backoff_ms(attempts, self._settings)
        await conn.fetchval(FAILED_SQL, endpoint_id, stored.txid, stored.seq, attempts, error, wait_ms)
        log.info(
            "webhook_delivery_failed",
            endpoint_id=endpoint_id,
            event_id=event.position.seq,
            attempts=attempts,
            retry_in_ms=round(wait_ms),
            error=error[:200],
        )

    async def _dead_letter(
        self,
        conn: PoolConnectionProxy,
        endpoint_id: int,
        stored: Position,
        event: Event,
        attempts: int,
        error: str,
    ) -> bool:
        """Gives up on the event for this endpoint (a dead letter) and moves past it."""
        async with conn.transaction():
            moved = await conn.fetchval(
                DEAD_LETTERED_SQL,
                endpoint_id,
                stored.txid,
                stored.seq,
                event.position.txid,
                event.position.seq,
                error,
            )
            if moved is None:
                return False
            await conn.execute(
                INSERT_DEAD_LETTER_SQL,
                endpoint_id,
                event.position.seq,
                event.type,
                event.json,
                attempts,
                error,
            )
        DELIVERIES.labels("dead_lettered").inc()
        log.warning(
            "webhook_event_dead_lettered",
            endpoint_id=endpoint_id,
            event_id=event.position.seq,
            attempts=attempts,
            error=error[:200],
        )
        return True

    async def _move(
        self, conn: PoolConnectionProxy, endpoint_id: int, stored: Position, to: Position, *, delivered: bool
    ) -> bool:
        moved = await conn.fetchval(
            DELIVERED_SQL, endpoint_id, stored.txid, stored.seq, to.txid, to.seq, delivered
        )
        return moved is not None

    async def _redeliver(self, conn: PoolConnectionProxy, endpoint_id: int, url: str, secret: str) -> None:
        """One more attempt for each dead letter an operator asked to redeliver."""
        rows = await conn.fetch(
            "SELECT id, event_id, event_type, body FROM webhook_dead_letters"
            " WHERE endpoint_id = $1 AND status = 'redeliver' ORDER BY id LIMIT $2",
            endpoint_id,
            REDELIVERIES_PER_TURN,
        )
        for row in rows:
            result = await self._post(url, secret, _stored_event(row))
            if result.ok:
                DELIVERIES.labels("redelivered").inc()
                await conn.execute(
                    "UPDATE webhook_dead_letters SET status = 'redelivered', redelivered_at = now() WHERE id = $1",
                    row["id"],
                )
            else:
                await conn.execute(
                    "UPDATE webhook_dead_letters SET status = 'dead', attempts = attempts + 1, last_error = $2"
                    " WHERE id = $1",
                    row["id"],
                    (result.error or "failed")[:ERROR_MAX_CHARS],
                )

    async def _post(self, url: str, secret: str, event: Event) -> Attempt:
        body = event.json.encode()
        timestamp = str(int(time.time()))
        webhook_id = str(event.position.seq)  # the event's id: the same on every attempt
        headers = {
            "Content-Type": "application/json",
            WEBHOOK_ID_HEADER: webhook_id,
            WEBHOOK_TIMESTAMP_HEADER: timestamp,
            WEBHOOK_SIGNATURE_HEADER: sign_standard(signing_key(secret), webhook_id, timestamp, body),
            EVENT_ID_HEADER: webhook_id,
            EVENT_TYPE_HEADER: event.type,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(secret, timestamp, body),
        }
        try:
            # httpx's timeout bounds each phase; this bounds the whole request (a receiver that
            # trickles its answer byte by byte does not hold the endpoint's lock any longer).
            async with asyncio.timeout(self._settings.webhook_timeout_ms / 1000):
                async with self._http().stream("POST", url, content=body, headers=headers) as response:
                    status = response.status_code  # the body is not read
        except Exception as exc:  # refused, reset, DNS, TLS, not HTTP, timed out: a failed attempt
            # The admin API shows last_error: one category for every failure without an HTTP
            # answer, so an endpoint cannot tell a closed port from a silent or non-HTTP one (no
            # map of internal hosts and ports). The exception itself goes to the log only.
            log.info("webhook_attempt_no_answer", error=type(exc).__name__, detail=str(exc)[:200])
            return Attempt(False, NO_HTTP_ANSWER.format(self._settings.webhook_timeout_ms))
        if 200 <= status < 300:
            return Attempt(True)
        return Attempt(False, f"HTTP {status}")


def _stored_event(row: asyncpg.Record) -> Event:
    return Event(Position(0, row["event_id"]), row["event_type"], row["body"])
