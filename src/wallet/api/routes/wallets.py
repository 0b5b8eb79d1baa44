"""GET /api/v1/wallets/{user_id}/balance and /transactions (history, newest first)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from wallet.api.dependencies import Pool, Reader
from wallet.api.documents import DocumentResponse
from wallet.api.errors import error_responses
from wallet.api.fast_path import FastPathRoute, authorized, bearer_token, fast_path, state
from wallet.api.params import Instant, PageSize, cursor_query, known_user_id
from wallet.api.schemas import BalancesOut, TransactionPage
from wallet.domain import errors
from wallet.domain.errors import WalletError
from wallet.domain.rules import ASSET_CODE_PATTERN, Scope, TransactionType
from wallet.services.wallets import balances_json, history_json

router = APIRouter(prefix="/api/v1/wallets", tags=["wallets"], route_class=FastPathRoute)


async def _fast_balance(request: Request) -> Response | None:
    """All balances of a user, without FastAPI's dependency solving (see fast_path)."""
    token = bearer_token(request)
    if token is None or request.scope.get("query_string"):
        return None
    caller = await authorized(request, token)
    caller.require(Scope.READ)
    resources, _ = state(request)
    user_id = known_user_id(request.path_params["user_id"])
    body = await resources.balance_reader.read(user_id)  # shares a query with concurrent reads
    if body is None:
        raise WalletError(errors.USER_NOT_FOUND, f"no user with id {user_id}")
    return DocumentResponse(body)


@router.get(
    "/{user_id}/balance",
    response_model=None,
    responses={200: {"model": BalancesOut}, **error_responses(401, 403, 404, 422, 429, 503)},
)
@fast_path(_fast_balance)
async def balance(
    pool: Pool,
    caller: Reader,
    user_id: str,
    asset_type: str | None = Query(default=None, pattern=ASSET_CODE_PATTERN, description="Only this asset."),
    as_of: Instant | None = Query(default=None, description="The balances at this instant, from the ledger."),
) -> Response:
    body = await balances_json(pool, known_user_id(user_id), asset_type, as_of)
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
