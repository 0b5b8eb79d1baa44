"""What routes receive: the pool, the settings and the authenticated caller, as typed
dependencies (annotated aliases). The only place that reads `app.state`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request, Response
from fastapi.security import HTTPBearer

from wallet.api.observe import note_api_key
from wallet.domain.rules import Scope
from wallet.services.api_keys import Authenticator, Caller
from wallet.services.balance_reads import BalanceReader
from wallet.services.group_commit import GroupCommitter
from wallet.services.rate_limits import RateLimiter
from wallet.settings import Settings


@dataclass(frozen=True, slots=True)
class Resources:
    """Set on `app.state.resources` by the application's lifespan."""

    pool: asyncpg.Pool
    authenticator: Authenticator
    rate_limiter: RateLimiter
    committer: GroupCommitter
    balance_reader: BalanceReader
    # For work that holds a session advisory lock across transactions (the audit's turn): on
    # WALLET_DIRECT_DATABASE_URL when one is set (see wallet.db.pool.create_session_pool).
    session_pool: asyncpg.Pool | None = None
    # For reads that may be stale (reports): on WALLET_READ_DATABASE_URL when one is set.
    read_pool: asyncpg.Pool | None = None


def resources_of(request: Request) -> Resources:
    """What the lifespan set up."""
    resources = request.app.state.resources
    assert isinstance(resources, Resources)
    return resources


def settings_of(request: Request) -> Settings:
    settings = request.app.state.settings
    assert isinstance(settings, Settings)
    return settings


# Async, though they do no I/O: FastAPI runs a plain `def` dependency in its thread pool, a
# thread hop per request that showed as a p95 of 200 ms on balance reads under load.
async def _pool(request: Request) -> asyncpg.Pool:
    return resources_of(request).pool


async def _session_pool(request: Request) -> asyncpg.Pool:
    resources = resources_of(request)
    return resources.session_pool or resources.pool


async def _read_pool(request: Request) -> asyncpg.Pool:
    resources = resources_of(request)
    return resources.read_pool or resources.pool


async def _settings(request: Request) -> Settings:
    return settings_of(request)


async def _committer(request: Request) -> GroupCommitter:
    return resources_of(request).committer


Pool = Annotated[asyncpg.Pool, Depends(_pool)]
SessionPool = Annotated[asyncpg.Pool, Depends(_session_pool)]
# Reads that may be stale by the replica's lag; the route shows it with `note_read_lag`.
ReadPool = Annotated[asyncpg.Pool, Depends(_read_pool)]
READ_LAG_HEADER = "X-Wallet-Read-Lag-Seconds"


async def note_read_lag(request: Request, response: Response) -> None:
    """On an answer read from WALLET_READ_DATABASE_URL: the replica's lag, in a header."""
    read_pool = resources_of(request).read_pool
    if read_pool is not None:
        from wallet.db.pool import replica_lag_s

        response.headers[READ_LAG_HEADER] = str(await replica_lag_s(read_pool))


Committer = Annotated[GroupCommitter, Depends(_committer)]
AppSettings = Annotated[Settings, Depends(_settings)]


async def authenticate_request(request: Request, token: str | None) -> Caller:
    """The one authentication of every route: the key, with failed lookups limited per source
    address (the peer address the server saw), then its client's rate limit (429 before any scope
    or body is looked at)."""
    resources = resources_of(request)
    client = request.scope.get("client")
    caller = await resources.authenticator.authenticate(token, client[0] if client else None)
    note_api_key(request.scope, caller.name)
    await resources.rate_limiter.check(caller)
    return caller


class Authenticated(HTTPBearer):
    """The caller, authenticated, and refused with 403 without `scope` (None: any scope). FastAPI's
    bearer scheme itself, so that the OpenAPI document declares it (as `HTTPBearer`, as before) and
    the route solves one dependency for all of it: each level of dependencies costs every request
    of the route, and the hot routes have no other path."""

    def __init__(self, scope: Scope | None) -> None:
        super().__init__(
            auto_error=False, scheme_name="HTTPBearer", description="An API key from `wallet keys create`."
        )
        self.scope = scope

    async def __call__(self, request: Request) -> Caller:  # type: ignore[override]
        credentials = await super().__call__(request)
        caller = await authenticate_request(request, credentials.credentials if credentials else None)
        if self.scope is not None:
            caller.require(self.scope)
        return caller


def requires(scope: Scope) -> Any:
    """`Annotated[Caller, requires(scope)]`: the caller, refused with 403 without `scope`."""
    return Depends(Authenticated(scope))


# The caller, authenticated; routes whose scope depends on the body check it themselves.
AnyCaller = Annotated[Caller, Depends(Authenticated(None))]
# The reading caller's scheme, also called explicitly by the balance read (a request-only endpoint).
READER = Authenticated(Scope.READ)
Reader = Annotated[Caller, Depends(READER)]
Admin = Annotated[Caller, requires(Scope.ADMIN)]
