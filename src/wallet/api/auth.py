"""Bearer-token authentication and scope checks, as FastAPI dependencies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from wallet.domain.transaction_types import Scope
from wallet.services.api_keys import Caller

_bearer = HTTPBearer(auto_error=False, description="An API key from `wallet keys create`.")


async def authenticated(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> Caller:
    token = credentials.credentials if credentials else None
    return await request.app.state.authenticator.authenticate(token)


def require_scope(scope: Scope) -> Callable[..., Awaitable[Caller]]:
    async def dependency(caller: Caller = Depends(authenticated)) -> Caller:
        caller.require(scope)
        return caller

    dependency.__name__ = f"require_{scope.value}"
    return dependency
