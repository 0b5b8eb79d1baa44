"""What routes receive: the pool, the settings and the authenticated caller, as typed
dependencies (annotated aliases). The only place that reads `app.state`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Header, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from wallet.api.observe import note_api_key
from wallet.domain import errors
from wallet.domain.errors import WalletError
from wallet.domain.rules import IDEMPOTENCY_KEY_MAX_CHARS, Scope
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
    """What the lifespan set up (also read by the hot routes' fast path, without Depends)."""
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

_bearer = HTTPBearer(auto_error=False, description="An API key from `wallet keys create`.")


async def authenticate_request(request: Request, token: str | None) -> Caller:
    """The one authentication of both request paths (the full one's dependency below and the fast
    path's): the key, with failed lookups limited per source address (the peer address the
    server saw), then its client's rate limit (429 before any scope or body is looked at)."""
    resources = resources_of(request)
    client = request.scope.get("client")
    caller = await resources.authenticator.authenticate(token, client[0] if client else None)
    note_api_key(request.scope, caller.name)
    await resources.rate_limiter.check(caller)
    return caller


async def _authenticated(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller:
    return await authenticate_request(request, credentials.credentials if credentials else None)


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


async def _idempotency_key_header(
    request: Request,
    declared: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Unique per logical operation; retries must reuse it. A token or a quoted "
            f'structured-field string ("abc" is the key abc); 1 to {IDEMPOTENCY_KEY_MAX_CHARS} '
            "printable ASCII characters without spaces.",
        ),
    ] = None,
) -> str | None:
    """The Idempotency-Key header as the IETF draft defines it: a structured-field string, so
    `"abc"` and `abc` are one key; sent twice it is refused, sent empty it is missing."""
    return idempotency_key_from_headers(request)


def idempotency_key_from_headers(request: Request) -> str | None:
    """See `_idempotency_key_header` (also used by the fast path)."""
    values = request.headers.getlist("idempotency-key")
    if len(values) > 1:
        raise WalletError(errors.IDEMPOTENCY_KEY_MALFORMED, "send one Idempotency-Key header, not several")
    if not values or not values[0].strip():
        return None
    value = values[0].strip()
    if value.startswith('"'):
        return _structured_string(value) or None
    if '"' in value:
        raise WalletError(
            errors.IDEMPOTENCY_KEY_MALFORMED,
            'Idempotency-Key has a quote (") but is not a quoted string: send abc or "abc"',
        )
    return value


def _structured_string(value: str) -> str:
    """An RFC 8941 string: `"` ... `"`, where only `\\"` and `\\\\` are escapes and nothing
    follows the closing quote (`"abc`, `"a",b` and `"a\\x"` are malformed, not keys)."""
    chars: list[str] = []
    index = 1
    while index < len(value):
        char = value[index]
        if char == "\\":
            if index + 1 == len(value) or value[index + 1] not in '"\\':
                raise WalletError(
                    errors.IDEMPOTENCY_KEY_MALFORMED,
                    'Idempotency-Key is not a valid quoted string: only \\" and \\\\ may follow a backslash',
                )
            chars.append(value[index + 1])
            index += 2
            continue
        if char == '"':
            if index != len(value) - 1:
                raise WalletError(
                    errors.IDEMPOTENCY_KEY_MALFORMED,
                    "Idempotency-Key is not a valid quoted string: something follows the closing quote",
                )
            return "".join(chars)
        chars.append(char)
        index += 1
    raise WalletError(
        errors.IDEMPOTENCY_KEY_MALFORMED, "Idempotency-Key is not a valid quoted string: no closing quote"
    )


# The Idempotency-Key header, unquoted (None when absent or empty).
IdempotencyKeyHeader = Annotated[str | None, Depends(_idempotency_key_header)]
