"""POST /api/v1/transactions/{topup,bonus,spend} and GET /api/v1/transactions/{id}."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response

from wallet.api.auth import authenticated, require_scope
from wallet.api.errors import error_responses
from wallet.api.metrics import POSTING_SECONDS, POSTINGS
from wallet.api.schemas import IDEMPOTENCY_KEY_PATTERN, BatchBody, BatchOut, PostingBody, TransactionOut
from wallet.domain.transaction_types import REQUIRED_SCOPE, Scope, TransactionType
from wallet.services.api_keys import Caller
from wallet.services.transactions import (
    PostingOutcome,
    PostingRequest,
    get_transaction_json,
    post_batch,
    post_transaction,
    resolve_idempotency_key,
)

router = APIRouter(prefix="/api/v1/transactions", tags=["transactions"])

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Unique per logical operation; retries must reuse it.",
    ),
]
WRITE_RESPONSES = {
    201: {"model": TransactionOut, "description": "Posted. Replays carry `Idempotent-Replayed: true`."},
    **error_responses(400, 401, 403, 404, 409, 413, 422, 503),
}


def _respond(kind: str, outcome: PostingOutcome) -> Response:
    POSTINGS.labels(kind, outcome.status_code, outcome.replayed).inc()
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
    return Response(outcome.body_json, outcome.status_code, headers, media_type="application/json")


async def _post(
    request: Request, type: TransactionType, body: PostingBody, caller: Caller, header_key: str | None
) -> Response:
    posting = PostingRequest(
        type=type,
        user_id=body.user_id,
        asset_code=body.asset_type,
        amount_minor=body.amount,
        idempotency_key=resolve_idempotency_key(body.idempotency_key, header_key),
        description=body.description,
        metadata=body.metadata,
    )
    with POSTING_SECONDS.labels(type.value).time():
        outcome = await post_transaction(
            request.app.state.pool, request.app.state.settings, caller.api_key_id, posting
        )
    return _respond(type.value, outcome)


@router.post(
    "/topup",
    status_code=201,
    response_model=None,
    responses=WRITE_RESPONSES,
    summary="Credit a user after a purchase (from SYSTEM_TREASURY)",
)
async def topup(
    request: Request,
    body: PostingBody,
    idempotency_key: IdempotencyKeyHeader = None,
    caller: Caller = Depends(require_scope(REQUIRED_SCOPE[TransactionType.TOPUP])),
) -> Response:
    return await _post(request, TransactionType.TOPUP, body, caller, idempotency_key)


@router.post(
    "/bonus",
    status_code=201,
    response_model=None,
    responses=WRITE_RESPONSES,
    summary="Grant a bonus (from SYSTEM_PROMOTIONS)",
)
async def bonus(
    request: Request,
    body: PostingBody,
    idempotency_key: IdempotencyKeyHeader = None,
    caller: Caller = Depends(require_scope(REQUIRED_SCOPE[TransactionType.BONUS])),
) -> Response:
    return await _post(request, TransactionType.BONUS, body, caller, idempotency_key)


@router.post(
    "/spend",
    status_code=201,
    response_model=None,
    responses=WRITE_RESPONSES,
    summary="Debit a user for an in-app purchase (into SYSTEM_REVENUE)",
)
async def spend(
    request: Request,
    body: PostingBody,
    idempotency_key: IdempotencyKeyHeader = None,
    caller: Caller = Depends(require_scope(REQUIRED_SCOPE[TransactionType.SPEND])),
) -> Response:
    return await _post(request, TransactionType.SPEND, body, caller, idempotency_key)


@router.post(
    "/batch",
    status_code=201,
    response_model=None,
    responses={**WRITE_RESPONSES, 201: {"model": BatchOut, "description": "All posted."}},
    summary="Post several operations atomically: all or none",
)
async def batch(
    request: Request,
    body: BatchBody,
    idempotency_key: IdempotencyKeyHeader = None,
    caller: Caller = Depends(authenticated),
) -> Response:
    for scope in sorted({REQUIRED_SCOPE[op.type] for op in body.operations}):
        caller.require(scope)
    operations = [
        PostingRequest(
            type=op.type,
            user_id=op.user_id,
            asset_code=op.asset_type,
            amount_minor=op.amount,
            idempotency_key=None,
            description=op.description,
            metadata=op.metadata,
        )
        for op in body.operations
    ]
    key = resolve_idempotency_key(body.idempotency_key, idempotency_key)
    with POSTING_SECONDS.labels("batch").time():
        outcome = await post_batch(
            request.app.state.pool, request.app.state.settings, caller.api_key_id, key, operations
        )
    return _respond("batch", outcome)


@router.get(
    "/{transaction_id}",
    response_model=None,
    responses={200: {"model": TransactionOut}, **error_responses(401, 403, 404, 503)},
)
async def get_transaction(
    request: Request,
    transaction_id: str,
    caller: Caller = Depends(require_scope(Scope.READ)),
) -> Response:
    body = await get_transaction_json(request.app.state.pool, transaction_id)
    return Response(body, media_type="application/json")
