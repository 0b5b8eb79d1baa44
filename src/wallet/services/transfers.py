"""Transfers between users (gifts, trades): one call of `wallet_post_transfer`, which locks both
users' accounts in ascending id (deadlock-free) and writes one balanced transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from wallet.domain.idempotency import IdempotencyKey
from wallet.domain.metadata import metadata_json
from wallet.domain.rules import KeyOperation
from wallet.services.api_keys import Caller
from wallet.services.outcome import PostingOutcome
from wallet.services.tracing import current_request_id


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """Already valid: each field, and two different users (wallet.api.write_bodies)."""

    from_user_id: str
    to_user_id: str
    asset_code: str
    amount_minor: int
    fee_minor: int
    description: str | None = None
    metadata: dict[str, Any] | None = None


async def post_transfer(
    pool: asyncpg.Pool, caller: Caller, key: IdempotencyKey, request: TransferRequest
) -> PostingOutcome:
    caller.permit(
        KeyOperation.TRANSFER, request.asset_code, request.amount_minor, fee_minor=request.fee_minor
    )
    return await PostingOutcome.call(
        pool,
        "wallet_post_transfer($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10)",
        caller.client_id,
        key.value,
        request.from_user_id,
        request.to_user_id,
        request.asset_code,
        request.amount_minor,
        request.fee_minor,
        request.description,
        metadata_json(request.metadata),
        current_request_id(),
    )
