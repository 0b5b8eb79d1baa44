"""API keys: creation, and authentication of a bearer token.

Keys are 256-bit random secrets, so a single SHA-256 is the right hash (no salt or slow KDF is
needed against brute force of a random 256-bit value). Only the hash and a short display prefix
are stored. A verified key is cached in-process for `auth_cache_ttl_ms`, which is also the longest
a revoked key keeps working; this keeps authentication off the hot path's round trips.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg

from wallet.domain import errors
from wallet.domain.errors import WalletError
from wallet.domain.rules import Scope, scope_allows

KEY_PREFIX = "wk_"
MAX_TOKEN_CHARS = 128
AUTH_CACHE_MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Caller:
    api_key_id: int
    name: str
    scopes: frozenset[Scope]

    def require(self, scope: Scope) -> None:
        if not scope_allows(self.scopes, scope):
            raise WalletError(errors.FORBIDDEN, f"this API key lacks the '{scope}' scope")


def _sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def parse_scopes(values: Iterable[str]) -> list[Scope]:
    scopes: list[Scope] = []
    for value in values:
        try:
            scope = Scope(value)
        except ValueError:
            allowed = ", ".join(s.value for s in Scope)
            raise WalletError(
                errors.INVALID_REQUEST, f"unknown scope '{value}'; allowed: {allowed}", "scope"
            ) from None
        if scope not in scopes:
            scopes.append(scope)
    if not scopes:
        raise WalletError(errors.INVALID_REQUEST, "at least one scope is required", "scope")
    return scopes


async def create_api_key(conn: asyncpg.Connection, name: str, scopes: Iterable[str]) -> str:
    """Stores a new key and returns its plaintext, which is never stored or shown again."""
    if not 1 <= len(name) <= 100:
        raise WalletError(errors.INVALID_REQUEST, "name must be 1 to 100 characters", "name")
    parsed = parse_scopes(scopes)
    token = KEY_PREFIX + secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO api_keys (name, key_prefix, key_sha256, scopes) VALUES ($1, $2, $3, $4)",
        name,
        token[:11],
        _sha256(token),
        [s.value for s in parsed],
    )
    return token


async def is_active_api_key(conn: asyncpg.Connection, token: str) -> bool:
    row = await conn.fetchval(
        "SELECT 1 FROM api_keys WHERE key_sha256 = $1 AND revoked_at IS NULL", _sha256(token)
    )
    return row is not None


async def revoke_api_key(conn: asyncpg.Connection, token: str) -> bool:
    result = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE key_sha256 = $1 AND revoked_at IS NULL",
        _sha256(token),
    )
    return result.endswith(" 1")


class Authenticator:
    """Resolves bearer tokens to callers, with a bounded, time-limited cache."""

    def __init__(self, pool: asyncpg.Pool, cache_ttl_ms: int) -> None:
        self._pool = pool
        self._cache_ttl_s = cache_ttl_ms / 1000
        self._cache: OrderedDict[bytes, tuple[Caller, float]] = OrderedDict()

    async def authenticate(self, token: str | None) -> Caller:
        if not token:
            raise WalletError(errors.UNAUTHENTICATED, "missing 'Authorization: Bearer <api key>' header")
        if len(token) > MAX_TOKEN_CHARS or not token.startswith(KEY_PREFIX):
            raise WalletError(errors.UNAUTHENTICATED, "invalid API key")
        digest = _sha256(token)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        row = await self._pool.fetchrow(
            "SELECT id, name, scopes FROM api_keys WHERE key_sha256 = $1 AND revoked_at IS NULL",
            digest,
        )
        if row is None:
            self._cache.pop(digest, None)
            raise WalletError(errors.UNAUTHENTICATED, "invalid or revoked API key")
        caller = Caller(row["id"], row["name"], frozenset(Scope(s) for s in row["scopes"]))
        if self._cache_ttl_s > 0:
            self._cache[digest] = (caller, now + self._cache_ttl_s)
            self._cache.move_to_end(digest)
            while len(self._cache) > AUTH_CACHE_MAX_ENTRIES:
                self._cache.popitem(last=False)
        return caller
