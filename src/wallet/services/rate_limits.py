"""Per-client rate limits: a token bucket per client, kept where every worker and instance sees it.

The bucket belongs to the client (`Caller.client_id`, the id of its first key), not to one secret:
during a rotation's overlap the old and the new secret draw from one bucket, so rotating never
doubles a client's rate (idempotency records are the client's for the same reason).

A bucket holds up to `burst` tokens and refills at `rps` tokens per second; each request takes
one, and a request that finds none is refused with 429 and the seconds until one will be there.
The bucket lives in a shared store, so the limit holds across the workers of one instance and
across instances: PostgreSQL (the default; the embedded database included, so it needs nothing
more) or Redis (`WALLET_RATE_LIMIT_STORE=redis`), which takes the write off the database.
Both use the store's clock, not each worker's, so workers with skewed clocks still agree.
"""

from __future__ import annotations

import hashlib
import math
from typing import Protocol

import asyncpg
import structlog

from wallet.domain import errors
from wallet.domain.errors import WalletError
from wallet.services.api_keys import Caller
from wallet.settings import Settings

log = structlog.get_logger("wallet.rate_limits")
REDIS_TIMEOUT_S = 0.5


class BucketStore(Protocol):
    async def take(self, client_id: int, rps: float, burst: int) -> float:
        """0 if a token was taken from the client's bucket, else the seconds until one will be there."""

    async def close(self) -> None: ...


class PostgresBuckets:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def take(self, client_id: int, rps: float, burst: int) -> float:
        wait_s = await self._pool.fetchval("SELECT wallet_rate_limit_take($1, $2, $3)", client_id, rps, burst)
        return float(wait_s)

    async def close(self) -> None:
        return None


# KEYS[1] = the bucket; ARGV = rps, burst. The same arithmetic as wallet_rate_limit_take, run
# atomically by Redis with its own clock. The key expires once a full bucket would have refilled.
_REDIS_TAKE = """
local rps = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rps)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rps
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(math.max(at, now)))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rps) + 1)
return tostring(wait)
"""


class RedisBuckets:
    def __init__(self, url: str, key_prefix: str) -> None:
        import redis.asyncio as redis

        self._errors = (redis.ConnectionError, redis.TimeoutError)
        self._client = redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        self._script = self._client.register_script(_REDIS_TAKE)
        self._key_prefix = key_prefix

    async def take(self, client_id: int, rps: float, burst: int) -> float:
        """Fails open: with Redis unreachable the requests go through (and a warning is logged),
        because a rate limit protects availability, and refusing every caller would end it."""
        try:
            wait_s = await self._script(keys=[f"{self._key_prefix}:{client_id}"], args=[repr(rps), burst])
        except self._errors as exc:
            log.warning("rate_limit_store_unreachable", store="redis", error=str(exc))
            return 0.0
        return float(wait_s)

    async def close(self) -> None:
        await self._client.aclose()


class RateLimiter:
    """Applies the client's limit (its keys' override, else the defaults) before a request runs."""

    def __init__(self, settings: Settings, store: BucketStore) -> None:
        self._default_rps = settings.rate_limit_rps
        self._default_burst = settings.rate_limit_burst
        self._store = store

    def limit_of(self, caller: Caller) -> tuple[float, int]:
        """(rps, burst); rps 0 means no limit."""
        rps = caller.rate_limit.rps if caller.rate_limit.rps is not None else self._default_rps
        burst = caller.rate_limit.burst if caller.rate_limit.burst is not None else self._default_burst
        return rps, burst or max(1, math.ceil(rps))

    async def check(self, caller: Caller) -> None:
        rps, burst = self.limit_of(caller)
        if rps <= 0:
            return
        wait_s = await self._store.take(caller.client_id, rps, burst)
        if wait_s > 0:
            raise WalletError(
                errors.RATE_LIMITED,
                f"rate limit of {rps:g} requests per second (burst {burst}) reached for this client (all its API keys)",
                retry_after_s=max(1, math.ceil(wait_s)),
            )

    async def close(self) -> None:
        await self._store.close()


def redis_key_prefix(database_url: str) -> str:
    """Buckets are named by client id (a key id), which is only unique within one database: the prefix names
    the database too, so deployments (or test databases) sharing one Redis never share buckets.
    The URL may name several hosts (`h1:p1,h2:p2/db?target_session_attrs=read-write`), which
    urlsplit refuses; the hosts are read here one by one (a one-host URL keeps its old prefix)."""
    rest = database_url.split("://", 1)[-1]
    location, slash, path = rest.partition("/")
    database = "/" + path.split("?", 1)[0] if slash else ""
    hosts = [_host_port(host) for host in location.rsplit("@", 1)[-1].split(",")]
    where = ",".join(f"{name}:{port}" for name, port in hosts) + database
    return f"wallet:rate:{hashlib.sha256(where.encode()).hexdigest()[:12]}"


def _host_port(host: str) -> tuple[str, int]:
    """`name`, `name:port`, `[v6]` or `[v6]:port` -> (lower-case name, port or 5432)."""
    if host.startswith("["):
        name, _, after = host[1:].partition("]")
        port = after.removeprefix(":")
    else:
        name, _, port = host.partition(":")
    return name.lower(), int(port) if port.isdigit() else 5432


def create_rate_limiter(settings: Settings, pool: asyncpg.Pool) -> RateLimiter:
    store: BucketStore
    if settings.rate_limit_store == "redis":
        assert settings.database_url is not None
        store = RedisBuckets(settings.redis_url, redis_key_prefix(settings.database_url))
    else:
        store = PostgresBuckets(pool)
    return RateLimiter(settings, store)
