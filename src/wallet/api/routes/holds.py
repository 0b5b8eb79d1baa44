"""POST /api/v1/holds, /holds/{id}/capture, /holds/{id}/void; GET /holds/{id} and a user's holds.

Built per application (`router(bodies)`), as the transactions' routes are, for the same reasons
(and so without `from __future__ import annotations`)."""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from wallet.api.dependencies import Pool, Reader
from wallet.api.documents import DocumentResponse
from wallet.api.errors import error_responses
from wallet.api.json_body import ExactJSONRoute
from wallet.api.params import PageSize, cursor_query, known_user_id
from wallet.api.respond import respond
from wallet.api.schemas import HoldOut, HoldPage, TransactionOut
from wallet.api.write import AcceptedWrite, WriteHandler, accept
from wallet.api.write_bodies import WriteBodies
from wallet.domain.rules import Scope
from wallet.services.holds import (
    HoldRequest,
    capture_hold,
    get_hold_json,
    list_holds_json,
    place_hold,
    void_hold,
)

WRITE_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 422, 429, 503)


def router(bodies: WriteBodies, key_chars: int) -> APIRouter:
    routes = APIRouter(prefix="/api/v1", tags=["holds"], route_class=ExactJSONRoute)

    def write(model: type[Any], **options: Any) -> Callable[[WriteHandler], Any]:
        return accept(model, Scope.SPEND, key_chars=key_chars, **options)

    @routes.post(
        "/holds",
        status_code=201,
        response_model=None,
        responses={201: {"model": HoldOut, "description": "Placed (status open)."}, **WRITE_ERRORS},
        summary="Reserve part of a user's available balance until captured, voided or expired",
    )
    @write(bodies.HoldBody)
    async def post_hold(accepted: AcceptedWrite[Any]) -> Response:
        body = accepted.body
        request = HoldRequest(
            user_id=body.user_id,
            asset_code=body.asset_type,
            amount_minor=body.amount,
            expires_in_seconds=body.expires_in_seconds,
            description=body.description,
            metadata=body.metadata,
        )
        outcome = await place_hold(
            accepted.resources.pool, accepted.settings, accepted.caller, accepted.idempotency_key, request
        )
        return respond("hold", outcome)

    @routes.post(
        "/holds/{hold_id}/capture",
        status_code=201,
        response_model=None,
        responses={201: {"model": TransactionOut, "description": "The capture transaction."}, **WRITE_ERRORS},
        summary="Spend all or part of a hold, once; the rest is released",
    )
    # No body (or `{}`) captures all; any body that is sent must be a valid object (not null).
    @write(bodies.CaptureBody, body_optional=True, path=("hold_id",))
    async def post_capture(accepted: AcceptedWrite[Any], hold_id: str) -> Response:
        body = accepted.body
        outcome = await capture_hold(
            accepted.resources.pool,
            accepted.caller,
            accepted.idempotency_key,
            hold_id,
            amount_minor=body.amount,
            description=body.description,
            metadata=body.metadata,
        )
        return respond("capture", outcome)

    @routes.post(
        "/holds/{hold_id}/void",
        status_code=200,
        response_model=None,
        responses={
            200: {"model": HoldOut, "description": "Voided: the hold reserves nothing now."},
            **WRITE_ERRORS,
        },
        summary="Release a hold without spending",
    )
    @write(bodies.VoidBody, body_optional=True, path=("hold_id",))
    async def post_void(accepted: AcceptedWrite[Any], hold_id: str) -> Response:
        outcome = await void_hold(accepted.resources.pool, accepted.caller, accepted.idempotency_key, hold_id)
        return respond("void", outcome)

    @routes.get(
        "/holds/{hold_id}",
        response_model=None,
        responses={200: {"model": HoldOut}, **error_responses(401, 403, 404, 429, 503)},
    )
    async def get_hold(pool: Pool, hold_id: str, caller: Reader) -> Response:
        return DocumentResponse(await get_hold_json(pool, hold_id))

    @routes.get(
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
        status: Annotated[
            str, Query(pattern="^(open|all)$", description="`open` (default) or `all`.")
        ] = "open",
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

    return routes
