"""POST /api/v1/transactions/{topup,bonus,spend,batch} and GET /api/v1/transactions/{id}."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response
from pydantic import ValidationError

from wallet.api.dependencies import (
    AnyCaller,
    AppSettings,
    Committer,
    IdempotencyKeyHeader,
    Pool,
    Reader,
    idempotency_key_from_headers,
    requires,
)
from wallet.api.documents import DocumentResponse
from wallet.api.errors import error_responses, status_of
from wallet.api.fast_path import authorized, bearer_token, fast_path, is_json, state
from wallet.api.json_body import ExactJSONRoute
from wallet.api.metrics import POSTING_SECONDS, POSTINGS
from wallet.api.schemas import (
    BatchBody,
    BatchOut,
    BonusBody,
    PostingBody,
    ReverseBody,
    TransactionOut,
    TransferBody,
)
from wallet.domain.documents import stored_answer
from wallet.domain.rules import (
    TYPE_RULES,
    Scope,
    TransactionType,
)
from wallet.services.api_keys import Caller
from wallet.services.limits import resolve_idempotency_key
from wallet.services.outcome import PostingOutcome
from wallet.services.reversals import reverse_transaction
from wallet.services.transactions import (
    PostingRequest,
    get_transaction_json,
    post_batch,
    post_transaction,
)
from wallet.services.transfers import TransferRequest, post_transfer

router = APIRouter(prefix="/api/v1/transactions", tags=["transactions"], route_class=ExactJSONRoute)

WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"model": TransactionOut, "description": "Posted. Replays carry `Idempotent-Replayed: true`."},
    **error_responses(400, 401, 403, 404, 409, 413, 422, 429, 503),
}


def respond(kind: str, outcome: PostingOutcome) -> Response:
    """The stored document with the status of its outcome, in the documented key order (the
    same bytes on the first answer and on every replay); a replay of a record stored before that
    order answers the bytes it answered then (see wallet.api.documents)."""
    status = status_of(outcome.code)
    POSTINGS.labels(kind, status, outcome.replayed).inc()
    if outcome.replayed:
        headers = {"Idempotent-Replayed": "true"}
        return Response(stored_answer(outcome.body_json), status, headers, media_type="application/json")
    return DocumentResponse(outcome.body_json, status)


async def _post(
    committer: Committer,
    settings: AppSettings,
    type: TransactionType,
    body: PostingBody,
    caller: Caller,
    header_key: str | None,
) -> Response:
    posting = PostingRequest(
        type=type,
        user_id=body.user_id,
        asset_code=body.asset_type,
        amount_minor=body.amount,
        idempotency_key=resolve_idempotency_key(body.idempotency_key, header_key),
        description=body.description,
        metadata=body.metadata,
        expires_at=body.expires_at if isinstance(body, BonusBody) else None,
        expires_in_seconds=body.expires_in_seconds if isinstance(body, BonusBody) else None,
    )
    with POSTING_SECONDS.labels(type.value).time():
        outcome = await post_transaction(committer, settings, caller, posting)
    return respond(type.value, outcome)


def _fast_post(type: TransactionType) -> Callable[[Request], Awaitable[Response | None]]:
    """The common case of a single write without FastAPI's dependency solving (see fast_path):
    the same checks in the same order, then the same `_post`."""
    scope = TYPE_RULES[type].scope
    model = BonusBody if type is TransactionType.BONUS else PostingBody

    async def handler(request: Request) -> Response | None:
        token = bearer_token(request)
        if (
            token is None
            or request.scope.get("query_string")
            or not is_json(request)
            or len(request.headers.getlist("idempotency-key")) > 1
        ):
            return None
        data = await request.json()
        if not isinstance(data, dict):  # not an object, not JSON, not UTF-8: the full path answers
            return None
        try:
            body = model.model_validate(data)
        except ValidationError:
            return None
        caller = await authorized(request, token)
        caller.require(scope)
        header_key = idempotency_key_from_headers(request)
        resources, settings = state(request)
        return await _post(resources.committer, settings, type, body, caller, header_key)

    return handler


def _summary(type: TransactionType) -> str:
    rule = TYPE_RULES[type]
    direction = "from" if rule.user_sign > 0 else "into"
    assert rule.system_account is not None
    return f"{rule.meaning.capitalize()} ({direction} {rule.system_account.value}; scope `{rule.scope}`)"


@router.post(
    "/topup", status_code=201, response_model=None, responses=WRITE_RESPONSES,
    summary=_summary(TransactionType.TOPUP),
)  # fmt: skip
@fast_path(_fast_post(TransactionType.TOPUP))
async def topup(
    committer: Committer,
    settings: AppSettings,
    body: PostingBody,
    caller: Annotated[Caller, requires(TYPE_RULES[TransactionType.TOPUP].scope)],
    idempotency_key: IdempotencyKeyHeader,
) -> Response:
    return await _post(committer, settings, TransactionType.TOPUP, body, caller, idempotency_key)


@router.post(
    "/bonus", status_code=201, response_model=None, responses=WRITE_RESPONSES,
    summary=_summary(TransactionType.BONUS),
)  # fmt: skip
@fast_path(_fast_post(TransactionType.BONUS))
async def bonus(
    committer: Committer,
    settings: AppSettings,
    body: BonusBody,
    caller: Annotated[Caller, requires(TYPE_RULES[TransactionType.BONUS].scope)],
    idempotency_key: IdempotencyKeyHeader,
) -> Response:
    return await _post(committer, settings, TransactionType.BONUS, body, caller, idempotency_key)


@router.post(
    "/spend", status_code=201, response_model=None, responses=WRITE_RESPONSES,
    summary=_summary(TransactionType.SPEND),
)  # fmt: skip
@fast_path(_fast_post(TransactionType.SPEND))
async def spend(
    committer: Committer,
    settings: AppSettings,
    body: PostingBody,
    caller: Annotated[Caller, requires(TYPE_RULES[TransactionType.SPEND].scope)],
    idempotency_key: IdempotencyKeyHeader,
) -> Response:
    return await _post(committer, settings, TransactionType.SPEND, body, caller, idempotency_key)


@router.post(
    "/batch",
    status_code=201,
    response_model=None,
    responses={**WRITE_RESPONSES, 201: {"model": BatchOut, "description": "All posted."}},
    summary="Post several operations atomically: all or none (each operation's scope)",
)
async def batch(
    pool: Pool,
    settings: AppSettings,
    body: BatchBody,
    caller: AnyCaller,
    idempotency_key: IdempotencyKeyHeader,
) -> Response:
    for scope in sorted({TYPE_RULES[op.type].scope for op in body.operations}):
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
            to_user_id=op.to_user_id,
            fee_minor=op.fee,
            expires_at=op.expires_at,
            expires_in_seconds=op.expires_in_seconds,
        )
        for op in body.operations
    ]
    key = resolve_idempotency_key(body.idempotency_key, idempotency_key)
    with POSTING_SECONDS.labels("batch").time():
        outcome = await post_batch(pool, settings, caller, key, operations)
    return respond("batch", outcome)


@router.get(
    "/{transaction_id}",
    response_model=None,
    responses={200: {"model": TransactionOut}, **error_responses(401, 403, 404, 429, 503)},
)
async def get_transaction(pool: Pool, transaction_id: str, caller: Reader) -> Response:
    body = await get_transaction_json(pool, transaction_id)
    return DocumentResponse(body)


@router.post(
    "/transfer",
    status_code=201,
    response_model=None,
    responses=WRITE_RESPONSES,
    summary="Move credits from one user to another, with an optional fee (scope `transfer`)",
)
async def transfer(
    pool: Pool,
    settings: AppSettings,
    body: TransferBody,
    caller: Annotated[Caller, requires(TYPE_RULES[TransactionType.TRANSFER].scope)],
    idempotency_key: IdempotencyKeyHeader,
) -> Response:
    request = TransferRequest(
        from_user_id=body.from_user_id,
        to_user_id=body.to_user_id,
        asset_code=body.asset_type,
        amount_minor=body.amount,
        fee_minor=body.fee,
        idempotency_key=resolve_idempotency_key(body.idempotency_key, idempotency_key),
        description=body.description,
        metadata=body.metadata,
    )
    with POSTING_SECONDS.labels("transfer").time():
        outcome = await post_transfer(pool, settings, caller, request)
    return respond("transfer", outcome)


@router.post(
    "/{transaction_id}/reverse",
    status_code=201,
    response_model=None,
    responses=WRITE_RESPONSES,
    summary="Refund a spend or capture, or claw back a top-up or bonus, in whole or part (scope `reverse`)",
)
async def reverse(
    pool: Pool,
    settings: AppSettings,
    transaction_id: str,
    caller: Annotated[Caller, requires(Scope.REVERSE)],
    idempotency_key: IdempotencyKeyHeader,
    # No body (or `{}`) reverses all it may (see ReverseBody.amount); any body that is sent must be a valid object
    # (not null, not malformed: neither may stand for "all").
    body: ReverseBody = Body(default_factory=ReverseBody),
) -> Response:
    if body.allow_negative:
        caller.require(Scope.ADMIN)
    outcome = await reverse_transaction(
        pool,
        settings,
        caller,
        transaction_id,
        amount_minor=body.amount,
        reason=body.reason,
        metadata=body.metadata,
        allow_negative=body.allow_negative,
        idempotency_key=resolve_idempotency_key(body.idempotency_key, idempotency_key),
    )
    return respond("reverse", outcome)
