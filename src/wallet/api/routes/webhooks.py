"""Webhook endpoints (admin): register, list, pause or resume, remove; their dead letters and
redelivery. Delivery itself runs in the background of each worker (wallet.services.webhooks)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Response

from wallet.api.dependencies import Admin, AppSettings, Pool
from wallet.api.errors import error_responses
from wallet.api.json_body import ExactJSONRoute
from wallet.api.params import PageSize, cursor_query
from wallet.api.schemas_events import (
    DeadLetterOut,
    DeadLetterPage,
    RedeliverBody,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookOut,
    WebhookUpdate,
)
from wallet.services import webhooks

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"], route_class=ExactJSONRoute)

WebhookId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The endpoint's id.")]
DeadLetterId = Annotated[int, Path(ge=1, le=2**63 - 1)]
READ_ERRORS = error_responses(401, 403, 404, 422, 429, 503)


@router.post(
    "",
    status_code=201,
    response_model=WebhookCreated,
    responses=error_responses(400, 401, 403, 413, 422, 429, 503),
    summary="Register a URL to receive events from now on; the answer holds its signing secret",
)
async def post_webhook(pool: Pool, settings: AppSettings, body: WebhookCreate, caller: Admin) -> Any:
    return await webhooks.create_endpoint(
        pool, settings, url=str(body.url), event_types=body.event_types, description=body.description
    )


@router.get("", response_model=WebhookList, responses=error_responses(401, 403, 429, 503))
async def get_webhooks(pool: Pool, caller: Admin) -> Any:
    return await webhooks.list_endpoints(pool)


@router.get("/{webhook_id}", response_model=WebhookOut, responses=READ_ERRORS)
async def get_webhook(pool: Pool, webhook_id: WebhookId, caller: Admin) -> Any:
    return await webhooks.get_endpoint(pool, webhook_id)


@router.patch(
    "/{webhook_id}",
    response_model=WebhookOut,
    responses=error_responses(400, 401, 403, 404, 413, 422, 429, 503),
    summary="Pause or resume deliveries",
)
async def patch_webhook(pool: Pool, webhook_id: WebhookId, body: WebhookUpdate, caller: Admin) -> Any:
    return await webhooks.set_endpoint_active(pool, webhook_id, body.active)


@router.delete(
    "/{webhook_id}",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "Removed, with its dead letters."}, **READ_ERRORS},
)
async def delete_webhook(pool: Pool, webhook_id: WebhookId, caller: Admin) -> Response:
    await webhooks.delete_endpoint(pool, webhook_id)
    return Response(status_code=204)


@router.get(
    "/{webhook_id}/dead-letters",
    response_model=None,
    responses={200: {"model": DeadLetterPage}, **READ_ERRORS},
    summary="Events given up on after WALLET_WEBHOOK_MAX_ATTEMPTS, newest first",
)
async def get_dead_letters(
    pool: Pool,
    webhook_id: WebhookId,
    caller: Admin,
    limit: PageSize,
    cursor: str | None = cursor_query(),
) -> Response:
    body = await webhooks.list_dead_letters_json(
        pool,
        webhook_id,
        limit=limit,
        cursor=cursor,
    )
    return Response(body, media_type="application/json")  # ordered, events verbatim (see service)


@router.post(
    "/{webhook_id}/dead-letters/{dead_letter_id}/redeliver",
    status_code=202,
    response_model=None,
    responses={
        202: {"model": DeadLetterOut, "description": "Queued: the next turn of delivery tries it once more."},
        **error_responses(400, 401, 403, 404, 413, 422, 429, 503),
    },
)
async def post_redeliver(
    pool: Pool,
    webhook_id: WebhookId,
    dead_letter_id: DeadLetterId,
    caller: Admin,
    body: RedeliverBody = Body(default_factory=RedeliverBody),  # none; one that is sent must be {}
) -> Response:
    queued = await webhooks.request_redelivery_json(pool, webhook_id, dead_letter_id)
    return Response(queued, status_code=202, media_type="application/json")  # as above
