"""Holds: reserve credits (authorize), then capture part or all of them once, or void them.

Each operation is one call of its database function (`wallet_place_hold`, `wallet_capture_hold`,
`wallet_void_hold`): the idempotency key, the account's row lock, the hold and any transaction
commit together. An open hold past its expiry counts for nothing from that instant; the
database releases it the next time the account is written, and the sweep below releases the rest.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import structlog

from wallet.domain import errors
from wallet.domain.errors import WalletError
from wallet.domain.idempotency import IdempotencyKey
from wallet.domain.metadata import metadata_json
from wallet.domain.rules import KeyOperation
from wallet.services.api_keys import Caller
from wallet.services.outcome import PostingOutcome
from wallet.services.pagination import CursorList, decode_int_cursor, encode_int_cursor
from wallet.services.tracing import current_request_id
from wallet.settings import Settings

log = structlog.get_logger("wallet.holds")


@dataclass(frozen=True, slots=True)
class HoldRequest:
    """Its fields already valid one by one (wallet.api.write_bodies), the expiry within
    WALLET_HOLD_EXPIRES_IN_SECONDS_MAX when given."""

    user_id: str
    asset_code: str
    amount_minor: int
    expires_in_seconds: int | None
    description: str | None = None
    metadata: dict[str, Any] | None = None


def _hold_id(hold_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(hold_id)
    except ValueError:
        raise WalletError(errors.HOLD_NOT_FOUND, f"no hold with id {hold_id}") from None


async def _permit_on_hold(
    pool: asyncpg.Pool, caller: Caller, operation: KeyOperation, hold_id: uuid.UUID, amount_minor: int | None
) -> None:
    """A restricted key's check of a capture or void: the hold's asset, and for a capture without
    an amount, the hold's amount. An unknown hold is left to the posting function (404)."""
    amount_known = amount_minor is not None or operation is KeyOperation.VOID
    if not caller.needs_subject(amount_known):
        caller.permit(operation, None, amount_minor)
        return
    row = await pool.fetchrow("SELECT asset_code, amount_minor FROM holds WHERE id = $1", hold_id)
    if row is None:
        caller.permit(operation, None, amount_minor)
        return
    if not amount_known:
        amount_minor = row["amount_minor"]
    caller.permit(operation, row["asset_code"], amount_minor)


async def place_hold(
    pool: asyncpg.Pool, settings: Settings, caller: Caller, key: IdempotencyKey, request: HoldRequest
) -> PostingOutcome:
    caller.permit(KeyOperation.HOLD, request.asset_code, request.amount_minor)
    # The default is within the maximum too (Settings refuses a configuration where it is not).
    expires_in = request.expires_in_seconds or settings.hold_expires_in_seconds_default
    return await PostingOutcome.call(
        pool,
        "wallet_place_hold($1, $2, $3, $4, $5, $6, $7, $8::jsonb)",
        caller.client_id,
        key.value,
        request.user_id,
        request.asset_code,
        request.amount_minor,
        expires_in,
        request.description,
        metadata_json(request.metadata),
    )


async def capture_hold(
    pool: asyncpg.Pool,
    caller: Caller,
    key: IdempotencyKey,
    hold_id: str,
    *,
    amount_minor: int | None,
    description: str | None,
    metadata: dict[str, Any] | None,
) -> PostingOutcome:
    parsed_id = _hold_id(hold_id)
    await _permit_on_hold(pool, caller, KeyOperation.CAPTURE, parsed_id, amount_minor)
    return await PostingOutcome.call(
        pool,
        "wallet_capture_hold($1, $2, $3, $4, $5, $6::jsonb, $7)",
        caller.client_id,
        key.value,
        parsed_id,
        amount_minor,
        description,
        metadata_json(metadata),
        current_request_id(),
    )


async def void_hold(pool: asyncpg.Pool, caller: Caller, key: IdempotencyKey, hold_id: str) -> PostingOutcome:
    parsed_id = _hold_id(hold_id)
    await _permit_on_hold(pool, caller, KeyOperation.VOID, parsed_id, None)
    return await PostingOutcome.call(
        pool,
        "wallet_void_hold($1, $2, $3)",
        caller.client_id,
        key.value,
        parsed_id,
    )


async def get_hold_json(pool: asyncpg.Pool, hold_id: str) -> str:
    body = await pool.fetchval(
        "SELECT wallet_hold_document(h)::text FROM holds h WHERE h.id = $1", _hold_id(hold_id)
    )
    if body is None:
        raise WalletError(errors.HOLD_NOT_FOUND, f"no hold with id {hold_id}")
    assert isinstance(body, str)
    return body


LIST_SQL = """
SELECT h.seq, wallet_hold_document(h)::text AS body
FROM holds h
WHERE h.user_id = $1
  AND ($2::boolean IS FALSE OR (h.status = 'open' AND h.expires_at > clock_timestamp()))
  AND ($3::bigint IS NULL OR h.seq < $3)
ORDER BY h.seq DESC
LIMIT $4
"""


async def list_holds_json(
    pool: asyncpg.Pool, user_id: str, *, open_only: bool, limit: int, cursor: str | None
) -> str:
    """The user's holds, newest first; `open_only` keeps those that still reserve credits."""
    before_seq = decode_int_cursor(CursorList.HOLDS, cursor, scope=user_id)
    rows = await pool.fetch(LIST_SQL, user_id, open_only, before_seq, limit + 1)
    if not rows and await pool.fetchval("SELECT 1 FROM users WHERE id = $1", user_id) is None:
        raise WalletError(errors.USER_NOT_FOUND, f"no user with id {user_id}")
    page = rows[:limit]
    next_cursor = (
        encode_int_cursor(CursorList.HOLDS, page[-1]["seq"], scope=user_id) if len(rows) > limit else None
    )
    return (
        '{"data":['
        + ",".join(r["body"] for r in page)
        + '],"next_cursor":'
        + orjson.dumps(next_cursor).decode()
        + "}"
    )


async def sweep_expired_holds(pool: asyncpg.Pool, max_accounts: int) -> int:
    """Marks expired holds 'expired' and releases them; returns the number of accounts swept."""
    swept = await pool.fetchval("SELECT wallet_sweep_expired_holds($1)", max_accounts)
    assert isinstance(swept, int)
    return swept


async def run_hold_sweeper(pool: asyncpg.Pool, settings: Settings) -> None:
    """Background task of each worker: sweep every `hold_sweep_interval_ms` until cancelled."""
    interval_s = settings.hold_sweep_interval_ms / 1000
    while True:
        await asyncio.sleep(interval_s)
        try:
            swept = await sweep_expired_holds(pool, settings.hold_sweep_max_accounts)
            if swept:
                log.info("expired_holds_released", accounts=swept)
        except Exception as exc:  # a sweep that fails is retried by the next one
            log.warning("hold_sweep_failed", error=type(exc).__name__)
