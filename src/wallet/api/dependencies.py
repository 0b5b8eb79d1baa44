"""What routes receive: the pool, the settings and the authenticated caller, as typed
dependencies (annotated aliases). The only place that reads `app.state`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from wallet.domain.rules import Scope
from wallet.services.api_keys import Authenticator, Caller
from wallet.settings import Settings


@dataclass(frozen=True, slots=True)
class Resources:
    """Set on `app.state.resources` by the application's lifespan."""

    pool: asyncpg.Pool
    authenticator: Authenticator


def _resources(request: Request) -> Resources:
    resources = request.app.state.resources
    assert isinstance(resources, Resources)
    return resources


# Async, though they do no I/O: FastAPI runs a plain `def` dependency in its thread pool, a
# thread hop per request that showed as a p95 of 200 ms on balance reads under load.
async def _pool(request: Request) -> asyncpg.Pool:
    return _resources(request).pool


async def _settings(request: Request) -> Settings:
    settings = request.app.state.settings
    assert isinstance(settings, Settings)
    return settings


Pool = Annotated[asyncpg.Pool, Depends(_pool)]
AppSettings = Annotated[Settings, Depends(_settings)]

_bearer = HTTPBearer(auto_error=False, description="An API key from `wallet keys create`.")


async def _authenticated(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller:
    token = credentials.credentials if credentials else None
    return await _resources(request).authenticator.authenticate(token)


def requires(scope: Scope) -> Any:
    """`Annotated[Caller, requires(scope)]`: the caller, refused with 403 without `scope`."""

    async def dependency(caller: Annotated[Caller, Depends(_authenticated)]) -> Caller:
        caller.require(scope)
        return caller

    dependency.__name__ = f"require_{scope.value}"
    return Depends(dependency)


# The caller, authenticated; routes whose scope depends on the body check it themselves.
AnyCaller = Annotated[Caller, Depends(_authenticated)]
Reader = Annotated[Caller, requires(Scope.READ)]
Admin = Annotated[Caller, requires(Scope.ADMIN)]
