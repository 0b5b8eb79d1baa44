"""Transfers between users (gifts, trades): one call of `wallet_post_transfer`, which locks both
users' accounts in ascending id (deadlock-free) and writes one balanced transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from wallet.domain import errors
from wallet.domain.errors import WalletError
from wallet.domain.rules import KeyOperation
from wallet.services.api_keys import Caller
from wallet.services.limits import check_amount, check_idempotency_key, check_text, encode_metadata
from wallet.services.outcome import PostingOutcome
from wallet.services.tracing import current_request_id
from wallet.settings import Settings


@dataclass(frozen=True, slots=True)
class TransferRequest:
    from_user_id: str
    to_user_id: str
    asset_code: str
    amount_minor: int
    fee_minor: int
    idempotency_key: str
    description: str | None = None
    metadata: dict[str, Any] | None = None


async def post_transfer(
    pool: asyncpg.Pool, settings: Settings, caller: Caller, request: TransferRequest
) -> PostingOutcome:
    key = check_idempotency_key(request.idempotency_key, settings)
    caller.permit(
        KeyOperation.TRANSFER, request.asset_code, request.amount_minor, fee_minor=request.fee_minor
    )
    if request.from_user_id == request.to_user_id:
        raise WalletError(errors.SAME_USER, "from_user_id and to_user_id must differ")
    check_amount(request.amount_minor, settings)
    check_amount(request.fee_minor, settings, "fee")
    check_text(request.description, settings)
    metadata_json = encode_metadata(request.metadata, settings)
    return await PostingOutcome.call(
        pool,
        "wallet_post_transfer($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10)",
        caller.client_id,
        key,
        request.from_user_id,
        request.to_user_id,
        request.asset_code,
        request.amount_minor,
        request.fee_minor,
        request.description,
        metadata_json.decode(),
        current_request_id(),
    )
