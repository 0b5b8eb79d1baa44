"""GET /api/v1/wallets/{user_id}/balance and /transactions (history, newest first)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response

from wallet.api.dependencies import READER, Pool, Reader, resources_of
from wallet.api.documents import DocumentResponse
from wallet.api.errors import error_responses
from wallet.api.params import Instant, PageSize, QueryParameter, cursor_query, known_user_id, refuse_any
from wallet.api.request_only import RequestOnlyRoute, documented, request_only
from wallet.api.schemas import BalancesOut, TransactionPage
from wallet.domain import errors
from wallet.domain.errors import WalletError
from wallet.domain.rules import ASSET_CODE_PATTERN, TransactionType
from wallet.services.wallets import balances_json, history_json

router = APIRouter(prefix="/api/v1/wallets", tags=["wallets"], route_class=RequestOnlyRoute)

ASSET_TYPE = QueryParameter(
    "asset_type", str | None, Query(default=None, pattern=ASSET_CODE_PATTERN, description="Only this asset.")
)
AS_OF = QueryParameter(
    "as_of", Instant | None, Query(default=None, description="The balances at this instant, from the ledger.")
)


@router.get(
    "/{user_id}/balance",
    response_model=None,
    responses={200: {"model": BalancesOut}, **error_responses(401, 403, 404, 422, 429, 503)},
)
@request_only(
    documented("caller", Reader), documented("user_id", str), ASSET_TYPE.documented, AS_OF.documented
)
async def balance(request: Request) -> Response:
    # The hot read takes the request alone (FastAPI's solving of its parameters was half of its
    # CPU) and reads them in FastAPI's order: the caller (401, 429, 403), then the query (422).
    # (A comment, not a docstring: that would be the operation's description.)
    await READER(request)
    refused: list[dict[str, Any]] = []
    asset_type = ASSET_TYPE.read(request, refused)
    as_of = AS_OF.read(request, refused)
    refuse_any(refused)
    user_id = known_user_id(request.path_params["user_id"])
    resources = resources_of(request)
    if asset_type is None and as_of is None:
        # The common read, all of a user's balances now: shares one query with concurrent ones.
        body = await resources.balance_reader.read(user_id)
        if body is None:
            raise WalletError(errors.USER_NOT_FOUND, f"no user with id {user_id}")
    else:
        body = await balances_json(resources.pool, user_id, asset_type, as_of)
    return DocumentResponse(body)


@router.get(
    "/{user_id}/transactions",
    response_model=None,
    responses={200: {"model": TransactionPage}, **error_responses(401, 403, 404, 422, 429, 503)},
)
async def history(
    pool: Pool,
    caller: Reader,
    user_id: str,
    limit: PageSize,
    cursor: str | None = cursor_query(),
    asset_type: str | None = Query(default=None, pattern=ASSET_CODE_PATTERN),
    type: TransactionType | None = Query(default=None),
    from_time: Instant | None = Query(default=None, alias="from", description="Inclusive."),
    to_time: Instant | None = Query(default=None, alias="to", description="Exclusive; not before from."),
) -> Response:
    body = await history_json(
        pool,
        known_user_id(user_id),
        limit=limit,
        cursor=cursor,
        asset_code=asset_type,
        type=type,
        from_time=from_time,
        to_time=to_time,
    )
    return DocumentResponse(body)
