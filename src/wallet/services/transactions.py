"""Use cases that write or read one transaction.

A write is one call of the database function `wallet_post_transaction`, in one database
transaction and one round trip: the idempotency key, the balance update under the user's row lock,
the ledger rows and the stored response commit together or not at all. The commands arrive valid:
the request models checked each field, its configured limit and the rules between fields
(expiries, a batch's transfers: wallet.api.write_bodies). This module checks the key's
restrictions, then hands the outcome back as the exact JSON document the database stored, so that
a replay is byte-for-byte the original answer.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from wallet.domain import errors
from wallet.domain.errors import WalletError
from wallet.domain.idempotency import IdempotencyKey
from wallet.domain.metadata import metadata_json
from wallet.domain.rules import KeyOperation, TransactionType
from wallet.services.api_keys import Caller
from wallet.services.group_commit import GroupCommitter, Write
from wallet.services.outcome import PostingOutcome
from wallet.services.tracing import current_request_id


@dataclass(frozen=True, slots=True)
class PostingRequest:
    """One operation, already valid: each field, and the rules between them (only a bonus carries
    an expiry, and one; only a transfer a receiver, other than its user, and a fee), checked by
    the request models (wallet.api.write_bodies)."""

    type: TransactionType
    user_id: str
    asset_code: str
    amount_minor: int
    description: str | None = None
    metadata: dict[str, Any] | None = None
    to_user_id: str | None = None  # transfers (in batches): the receiver
    fee_minor: int = 0  # transfers: paid by the sender to SYSTEM_REVENUE
    expires_at: datetime | None = None  # bonuses: when its credits expire (else the asset's default)
    expires_in_seconds: int | None = None  # bonuses: or this long after posting


async def post_transaction(
    committer: GroupCommitter, caller: Caller, key: IdempotencyKey, request: PostingRequest
) -> PostingOutcome:
    """A single top-up, bonus or spend, posted with whatever else arrives at the same time (see
    group_commit): same outcome, same stored document, as if it were posted alone."""
    caller.permit(KeyOperation(request.type.value), request.asset_code, request.amount_minor)
    metadata = metadata_json(request.metadata)
    if request.expires_at is not None or request.expires_in_seconds is not None:
        # Rare, and the group function takes no expiry: posted alone (same fingerprint either way).
        return await PostingOutcome.call(
            committer.pool,
            "wallet_post_transaction($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11)",
            caller.client_id,
            key.value,
            request.type.value,
            request.user_id,
            request.asset_code,
            request.amount_minor,
            request.description,
            metadata,
            current_request_id(),
            request.expires_at,
            request.expires_in_seconds,
        )
    return await committer.post(
        Write(
            api_key_id=caller.client_id,
            idempotency_key=key.value,
            type=request.type.value,
            user_id=request.user_id,
            asset_code=request.asset_code,
            amount_minor=request.amount_minor,
            description=request.description,
            metadata_json=metadata,
            request_id=current_request_id(),
        )
    )


async def post_batch(
    pool: asyncpg.Pool, caller: Caller, key: IdempotencyKey, operations: list[PostingRequest]
) -> PostingOutcome:
    """All operations or none, under one idempotency key; see `wallet_post_batch`."""
    items: list[dict[str, Any]] = []
    for index, op in enumerate(operations):
        # A transfer's fee is debited from its sender too (only a transfer has one).
        caller.permit(
            KeyOperation(op.type.value),
            op.asset_code,
            op.amount_minor,
            fee_minor=op.fee_minor,
            field_prefix=f"operations[{index}].",
        )
        item: dict[str, Any] = {
            "type": op.type.value,
            "user_id": op.user_id,
            "asset_type": op.asset_code,
            "amount": op.amount_minor,
            "description": op.description,
            "metadata": orjson.Fragment(metadata_json(op.metadata)),
        }
        if op.type is TransactionType.TRANSFER:
            # Only transfers carry these keys, so earlier batches keep their fingerprints.
            item |= {"to_user_id": op.to_user_id, "fee": op.fee_minor}
        # Only bonuses with an expiry carry these keys, so earlier batches keep their fingerprints.
        if op.expires_at is not None:
            item["expires_at"] = op.expires_at.isoformat()
        if op.expires_in_seconds is not None:
            item["expires_in_seconds"] = op.expires_in_seconds
        items.append(item)
    payload = orjson.dumps(items).decode()
    return await PostingOutcome.call(
        pool,
        "wallet_post_batch($1, $2, $3::jsonb, $4)",
        caller.client_id,
        key.value,
        payload,
        current_request_id(),
    )


async def get_transaction_json(pool: asyncpg.Pool, transaction_id: str) -> str:
    try:
        parsed = uuid.UUID(transaction_id)
    except ValueError:
        raise WalletError(errors.TRANSACTION_NOT_FOUND, f"no transaction with id {transaction_id}") from None
    body = await pool.fetchval("SELECT wallet_transaction_json($1)::text", parsed)
    if body is None:
        raise WalletError(errors.TRANSACTION_NOT_FOUND, f"no transaction with id {transaction_id}")
    assert isinstance(body, str)
    return body
