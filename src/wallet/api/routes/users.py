"""GET/POST /api/v1/users and GET /api/v1/asset-types."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from wallet.api.auth import require_scope
from wallet.api.errors import error_responses
from wallet.api.schemas import AssetTypeList, UserCreate, UserOut, UserPage
from wallet.domain.transaction_types import Scope
from wallet.services.api_keys import Caller
from wallet.services.pagination import check_limit
from wallet.services.users import create_user, list_asset_types, list_users

router = APIRouter(prefix="/api/v1", tags=["users"])


@router.get("/users", response_model=UserPage, responses=error_responses(401, 403, 422, 503))
async def get_users(
    request: Request,
    limit: int | None = Query(default=None, ge=1, description="Default 50, at most 200."),
    cursor: str | None = Query(default=None, max_length=200),
    caller: Caller = Depends(require_scope(Scope.READ)),
) -> dict[str, Any]:
    settings = request.app.state.settings
    return await list_users(
        request.app.state.pool,
        limit=check_limit(limit, settings.page_size_default, settings.page_size_max),
        cursor=cursor,
    )


@router.post(
    "/users",
    status_code=201,
    response_model=UserOut,
    responses={
        200: {"model": UserOut, "description": "Already existed, same name"},
        **error_responses(400, 401, 403, 409, 413, 422, 503),
    },
)
async def post_user(
    request: Request,
    body: UserCreate,
    caller: Caller = Depends(require_scope(Scope.ADMIN)),
) -> JSONResponse:
    user, created = await create_user(request.app.state.pool, body.user_id, body.name)
    return JSONResponse(user, status_code=201 if created else 200)


@router.get(
    "/asset-types", response_model=AssetTypeList, tags=["assets"], responses=error_responses(401, 403, 503)
)
async def get_asset_types(
    request: Request,
    caller: Caller = Depends(require_scope(Scope.READ)),
) -> dict[str, Any]:
    return await list_asset_types(request.app.state.pool)
