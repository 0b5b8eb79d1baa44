"""GET /api/v1/events: the change feed (see wallet.services.events)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from wallet.api.dependencies import Pool, Reader
from wallet.api.documents import DocumentResponse
from wallet.api.errors import error_responses
from wallet.api.params import PageSize, cursor_query
from wallet.api.schemas_events import EventPage
from wallet.services.events import events_page_json

router = APIRouter(prefix="/api/v1", tags=["events"])


@router.get(
    "/events",
    response_model=None,
    responses={200: {"model": EventPage}, **error_responses(401, 403, 422, 429, 503)},
    summary="Change events in order, after a cursor (gap-free: nothing ever appears behind it)",
)
async def get_events(
    pool: Pool,
    caller: Reader,
    limit: PageSize,
    after: str | None = cursor_query(
        "`next_cursor` of the previous page (or any event's `cursor`); from the oldest kept when absent."
    ),
) -> Response:
    body = await events_page_json(pool, after, limit)
    return DocumentResponse(body)
