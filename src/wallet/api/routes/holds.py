"""POST /api/v1/holds, /holds/{id}/capture, /holds/{id}/void; GET /holds/{id} and a user's holds."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response

from wallet.api.dependencies import AppSettings, IdempotencyKeyHeader, Pool, Reader, requires
from wallet.api.documents import DocumentResponse
from wallet.api.errors import error_responses
from wallet.api.json_body import ExactJSONRoute
from wallet.api.params import PageSize, cursor_query, known_user_id
from wallet.api.routes.transactions import respond
from wallet.api.schemas import CaptureBody, HoldBody, HoldOut, HoldPage, TransactionOut, VoidBody
from wallet.domain.rules import Scope
from wallet.services.api_keys import Caller
from wallet.services.holds import (
    HoldRequest,
    capture_hold,
    get_hold_json,
    list_holds_json,
    place_hold,
    void_hold,
)
from wallet.services.limits import resolve_idempotency_key

router = APIRouter(prefix="/api/v1", tags=["holds"], route_class=ExactJSONRoute)
Holder = Annotated[Caller, requires(Scope.SPEND)]
WRITE_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 422, 429, 503)


@router.post(
    "/holds",
    status_code=201,
    response_model=None,
    responses={201: {"model": HoldOut, "description": "Placed (status open)."}, **WRITE_ERRORS},
    summary="Reserve part of a user's available balance until captured, voided or expired",
)
async def post_hold(
    pool: Pool,
    settings: AppSettings,
    body: HoldBody,
    caller: Holder,
    idempotency_key: IdempotencyKeyHeader,
) -> Response:
    request = HoldRequest(
        user_id=body.user_id,
        asset_code=body.asset_type,
        amount_minor=body.amount,
        expires_in_seconds=body.expires_in_seconds,
        idempotency_key=resolve_idempotency_key(body.idempotency_key, idempotency_key),
        description=body.description,
        metadata=body.metadata,
    )
    return respond("hold", await place_hold(pool, settings, caller, request))


@router.post(
    "/holds/{hold_id}/capture",
    status_code=201,
    response_model=None,
    responses={201: {"model": TransactionOut, "description": "The capture transaction."}, **WRITE_ERRORS},
    summary="Spend all or part of a hold, once; the rest is released",
)
async def post_capture(
    pool: Pool,
    settings: AppSettings,
    hold_id: str,
    caller: Holder,
    idempotency_key: IdempotencyKeyHeader,
    # No body (or `{}`) captures all; any body that is sent must be a valid object (not null).
    body: CaptureBody = Body(default_factory=CaptureBody),
) -> Response:
    outcome = await capture_hold(
        pool,
        settings,
        caller,
        hold_id,
        amount_minor=body.amount,
        idempotency_key=resolve_idempotency_key(body.idempotency_key, idempotency_key),
        description=body.description,
        metadata=body.metadata,
    )
    return respond("capture", outcome)


@router.post(
    "/holds/{hold_id}/void",
    status_code=200,
    response_model=None,
    responses={
        200: {"model": HoldOut, "description": "Voided: the hold reserves nothing now."},
        **WRITE_ERRORS,
    },
    summary="Release a hold without spending",
)
async def post_void(
    pool: Pool,
    settings: AppSettings,
    hold_id: str,
    caller: Holder,
    idempotency_key: IdempotencyKeyHeader,
    body: VoidBody = Body(default_factory=VoidBody),
) -> Response:
    key = resolve_idempotency_key(body.idempotency_key, idempotency_key)
    return respond("void", await void_hold(pool, settings, caller, hold_id, idempotency_key=key))


@router.get(
    "/holds/{hold_id}",
    response_model=None,
    responses={200: {"model": HoldOut}, **error_responses(401, 403, 404, 429, 503)},
)
async def get_hold(pool: Pool, hold_id: str, caller: Reader) -> Response:
    return DocumentResponse(await get_hold_json(pool, hold_id))


@router.get(
    "/wallets/{user_id}/holds",
    response_model=None,
    responses={200: {"model": HoldPage}, **error_responses(401, 403, 404, 422, 429, 503)},
    summary="A user's holds, newest first (open ones only unless status=all)",
)
async def get_user_holds(
    pool: Pool,
    caller: Reader,
    user_id: str,
    limit: PageSize,
    status: Annotated[str, Query(pattern="^(open|all)$", description="`open` (default) or `all`.")] = "open",
    cursor: str | None = cursor_query(),
) -> Any:
    body = await list_holds_json(
        pool,
        known_user_id(user_id),
        open_only=status == "open",
        limit=limit,
        cursor=cursor,
    )
    return DocumentResponse(body)
