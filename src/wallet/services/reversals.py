"""Reversals: refund a spend or capture, claw back a top-up or bonus, in whole or in parts.

One call of `wallet_reverse_transaction`: the reversal is a new transaction mirroring the
original's entries; the database keeps the running total of what was reversed and refuses any
reversal that would take it past the original's amount.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from wallet.domain import errors
from wallet.domain.errors import WalletError
from wallet.domain.idempotency import IdempotencyKey
from wallet.domain.metadata import metadata_json
from wallet.domain.rules import KeyOperation
from wallet.services.api_keys import Caller
from wallet.services.outcome import PostingOutcome
from wallet.services.tracing import current_request_id


async def reverse_transaction(
    pool: asyncpg.Pool,
    caller: Caller,
    key: IdempotencyKey,
    transaction_id: str,
    *,
    amount_minor: int | None,
    reason: str | None,
    metadata: dict[str, Any] | None,
    allow_negative: bool,
) -> PostingOutcome:
    """`allow_negative` must already be authorised (admin scope) by the caller of this; the
    fields are valid one by one (wallet.api.write_bodies)."""
    try:
        original = uuid.UUID(transaction_id)
    except ValueError:
        raise WalletError(
            errors.TRANSACTION_NOT_FOUND, f"no transaction with id {transaction_id}", "transaction_id"
        ) from None
    if caller.needs_subject(amount_minor is not None):
        # A restricted key: the original's asset, and without an amount what is left of it.
        row = await pool.fetchrow(
            """
            SELECT t.asset_code, t.amount_minor - coalesce(r.reversed_amount_minor, 0) AS remaining_minor
              FROM transactions t LEFT JOIN reversal_totals r ON r.transaction_id = t.id
             WHERE t.id = $1
            """,
            original,
        )
        if row is not None:
            caller.permit(
                KeyOperation.REVERSE,
                row["asset_code"],
                amount_minor if amount_minor is not None else row["remaining_minor"],
            )
    caller.permit(KeyOperation.REVERSE, None, amount_minor)
    return await PostingOutcome.call(
        pool,
        "wallet_reverse_transaction($1, $2, $3, $4, $5, $6::jsonb, $7, $8)",
        caller.client_id,
        key.value,
        original,
        amount_minor,
        reason,
        metadata_json(metadata),
        allow_negative,
        current_request_id(),
    )
