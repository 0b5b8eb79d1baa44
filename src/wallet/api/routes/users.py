"""GET/POST /api/v1/users and GET /api/v1/asset-types."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from wallet.api.dependencies import Admin, Pool, Reader
from wallet.api.documents import DocumentResponse
from wallet.api.errors import error_responses
from wallet.api.json_body import ExactJSONRoute
from wallet.api.params import PageSize, cursor_query
from wallet.api.schemas import AssetTypeList, UserCreate, UserOut, UserPage
from wallet.services.users import create_user, list_asset_types, list_users

router = APIRouter(prefix="/api/v1", tags=["users"], route_class=ExactJSONRoute)


@router.get("/users", response_model=UserPage, responses=error_responses(401, 403, 422, 429, 503))
async def get_users(
    pool: Pool,
    caller: Reader,
    limit: PageSize,
    cursor: str | None = cursor_query(),
) -> dict[str, Any]:
    return await list_users(
        pool,
        limit=limit,
        cursor=cursor,
    )


@router.post(
    "/users",
    status_code=201,
    response_model=UserOut,
    responses={
        200: {"model": UserOut, "description": "Already existed, same name"},
        **error_responses(400, 401, 403, 409, 413, 422, 429, 503),
    },
)
async def post_user(pool: Pool, body: UserCreate, caller: Admin) -> DocumentResponse:
    user, created = await create_user(pool, body.user_id, body.name)
    return DocumentResponse(user, status_code=201 if created else 200)


@router.get(
    "/asset-types",
    response_model=AssetTypeList,
    tags=["assets"],
    responses=error_responses(401, 403, 429, 503),
)
async def get_asset_types(pool: Pool, caller: Reader) -> dict[str, Any]:
    return await list_asset_types(pool)
