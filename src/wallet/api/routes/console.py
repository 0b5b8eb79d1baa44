"""The operator console at `/console` (a static page, `wallet.console`), and the reads it needs
beyond the rest of the API: who the key is (`/me`), user search, the audit, daily volume.

The page and its assets are not part of the API and not in the OpenAPI document; the reads are,
with the same error shape and scopes as every other route.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field

from wallet.api.dependencies import (
    Admin,
    AnyCaller,
    AppSettings,
    Pool,
    Reader,
    ReadPool,
    SessionPool,
    note_read_lag,
)
from wallet.api.errors import error_responses
from wallet.api.json_body import ExactJSONRoute
from wallet.api.params import PageSize
from wallet.console import reports
from wallet.domain import errors
from wallet.domain.rules import KeyOperation, Scope, scope_allows
from wallet.services.verify import MAX_PROBLEMS_PER_CHECK

api = APIRouter(prefix="/api/v1", tags=["console"], route_class=ExactJSONRoute)
pages = APIRouter(include_in_schema=False)


class KeyRestrictionsOut(BaseModel):
    operations: list[KeyOperation] | None = Field(description="None: any operation its scopes allow.")
    asset_types: list[str] | None = Field(description="None: any asset type.")
    max_amount: int | None = Field(description="None: up to the service's maximum.")


class KeyOut(BaseModel):
    name: str
    scopes: list[Scope]
    allows: dict[str, bool] = Field(description="For each scope, whether this key has it (admin has all).")
    restrictions: KeyRestrictionsOut


class UserFound(BaseModel):
    user_id: str
    name: str
    created_at: str


class UserSearchOut(BaseModel):
    query: str
    data: list[UserFound]


class AuditProblem(BaseModel):
    check: str
    details: list[str] = Field(description=f"At most {MAX_PROBLEMS_PER_CHECK} per check.")


class AuditCounts(BaseModel):
    user_accounts: int
    transactions: int
    ledger_entries: int
    chain_links: int


class SystemBalance(BaseModel):
    account: str
    asset_type: str
    balance: int


class AuditOut(BaseModel):
    kind: str = Field(description="'incremental' (the default) or 'full' (?full=true).")
    clean: bool = Field(description="Every check passed (wallet_ledger_consistent at /metrics).")
    checked_at: str = Field(description="When the run finished.")
    started_at: str
    from_seq: int = Field(description="Transactions with seq in (from_seq, to_seq] were checked.")
    to_seq: int
    last_clean_at: str | None = Field(description="When the newest clean run finished, this one included.")
    problems: list[AuditProblem]
    counts: AuditCounts | None = Field(description="Full runs: what was recomputed.")
    system_balances: list[SystemBalance] = Field(description="Full runs: derived from the ledger.")
    report: str = Field(description="The report as text (`wallet verify`'s own for a full run).")


class DayVolume(BaseModel):
    day: str = Field(description="UTC day, YYYY-MM-DD.")
    asset_type: str
    credited: int = Field(description="Credited to user accounts that day, minor units.")
    debited: int = Field(description="Debited from user accounts that day, minor units.")
    transactions: int


class VolumeOut(BaseModel):
    days: int
    from_: str = Field(alias="from", description="First UTC day of the window.")
    to: str = Field(description="Last UTC day of the window (today).")
    data: list[DayVolume] = Field(description="By day, then asset; days without postings are left out.")


@api.get(
    "/me",
    response_model=KeyOut,
    responses=error_responses(401, 429, 503),
    summary="The calling API key: its name, scopes and restrictions (any scope)",
)
async def me(caller: AnyCaller) -> dict[str, Any]:
    allowed = caller.restrictions
    return {
        "name": caller.name,
        "scopes": sorted(caller.scopes),
        "allows": {scope.value: scope_allows(caller.scopes, scope) for scope in Scope},
        "restrictions": {
            "operations": sorted(allowed.operations) if allowed.operations is not None else None,
            "asset_types": sorted(allowed.asset_codes) if allowed.asset_codes is not None else None,
            "max_amount": allowed.max_amount_minor,
        },
    }


@api.get(
    "/search/users",
    response_model=UserSearchOut,
    responses=error_responses(401, 403, 422, 429, 503),
    summary="Find users by id (exact, or its start) or name (any part), case-insensitively (scope `read`)",
)
async def search_users(
    pool: Pool,
    caller: Reader,
    limit: PageSize,
    q: str = Query(
        min_length=1,
        max_length=reports.SEARCH_QUERY_MAX_CHARS,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="A user id, the start of one, or part of a name.",
    ),
) -> dict[str, Any]:
    return await reports.search_users(pool, q, limit=limit)


@api.get(
    "/audit",
    response_model=AuditOut,
    responses=error_responses(401, 403, 429, 503),
    summary="Audit the books: what changed since the last clean run, or everything (scope `admin`)",
    description=(
        "Incremental by default: the transactions posted since the last clean run and every user"
        " account's cached figures (balance, held, lots), so it stays cheap on a large ledger."
        " `full=true` recomputes everything as `wallet verify` does. Each run is recorded and sets"
        " the `wallet_ledger_consistent` gauge at /metrics."
    ),
)
async def audit(
    pool: SessionPool,
    settings: AppSettings,
    caller: Admin,
    full: bool = Query(default=False, description="Recompute the whole ledger, as `wallet verify`."),
) -> dict[str, Any]:
    return await reports.audit(pool, settings, full=full)


@api.get(
    "/reports/volume",
    response_model=VolumeOut,
    response_model_by_alias=True,
    responses=error_responses(401, 403, 422, 429, 503),
    summary="Credited and debited per asset per UTC day over the last days (scope `read`)",
    dependencies=[Depends(note_read_lag)],
)
async def volume(
    pool: ReadPool,
    caller: Reader,
    days: int = Query(
        default=reports.VOLUME_DAYS_DEFAULT,
        ge=1,
        le=reports.VOLUME_DAYS_MAX,
        description=f"UTC days, today included; at most {reports.VOLUME_DAYS_MAX}.",
    ),
) -> dict[str, Any]:
    return await reports.volume_per_day(pool, days)


# The page: static files from the package, read once. Relative links in them keep the console
# working behind a proxy that mounts the service under a path prefix.
_STATIC = resources.files("wallet.console") / "static"
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
_ASSETS: dict[str, tuple[bytes, str]] = {
    entry.name: (entry.read_bytes(), _MEDIA_TYPES[os.path.splitext(entry.name)[1]])
    for entry in _STATIC.iterdir()
    if os.path.splitext(entry.name)[1] in _MEDIA_TYPES
}
# The API key lives in the page's sessionStorage: no script but the console's own may run there,
# and no other site may frame it.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> Response:
    found = _ASSETS.get(name)
    if found is None:
        raise errors.WalletError(errors.NOT_FOUND, "no such endpoint")
    body, media_type = found
    return Response(body, media_type=media_type, headers=_HEADERS)


@pages.get("/console")
async def console_page() -> Response:
    return _asset("index.html")


@pages.get("/console/assets/{name}")
async def console_asset(name: str) -> Response:
    return _asset(name if name != "index.html" else "")


router = APIRouter()
router.include_router(api)
router.include_router(pages)
