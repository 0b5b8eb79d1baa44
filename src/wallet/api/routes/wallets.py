"""GET /api/v1/wallets/{user_id}/balance and /transactions (history, newest first)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response

from wallet.api.auth import require_scope
from wallet.api.errors import error_responses
from wallet.api.schemas import BalancesOut, TransactionPage
from wallet.domain.transaction_types import Scope, TransactionType
from wallet.services.api_keys import Caller
from wallet.services.pagination import check_limit
from wallet.services.wallets import balances_json, history_json

router = APIRouter(prefix="/api/v1/wallets", tags=["wallets"])


@router.get(
    "/{user_id}/balance",
    response_model=None,
    responses={200: {"model": BalancesOut}, **error_responses(401, 403, 404, 422, 503)},
)
async def balance(
    request: Request,
    user_id: str,
    asset_type: str | None = Query(default=None, max_length=32, description="Only this asset."),
    caller: Caller = Depends(require_scope(Scope.READ)),
) -> Response:
    body = await balances_json(request.app.state.pool, user_id, asset_type)
    return Response(body, media_type="application/json")


@router.get(
    "/{user_id}/transactions",
    response_model=None,
    responses={200: {"model": TransactionPage}, **error_responses(401, 403, 404, 422, 503)},
)
async def history(
    request: Request,
    user_id: str,
    limit: int | None = Query(
        default=None, ge=1, description="Page size; default 50, at most WALLET_PAGE_SIZE_MAX (200)."
    ),
    cursor: str | None = Query(
        default=None, max_length=200, description="`next_cursor` of the previous page."
    ),
    asset_type: str | None = Query(default=None, max_length=32),
    type: TransactionType | None = Query(default=None),
    caller: Caller = Depends(require_scope(Scope.READ)),
) -> Response:
    settings = request.app.state.settings
    body = await history_json(
        request.app.state.pool,
        user_id,
        limit=check_limit(limit, settings.page_size_default, settings.page_size_max),
        cursor=cursor,
        asset_code=asset_type,
        type=type,
    )
    return Response(body, media_type="application/json")
