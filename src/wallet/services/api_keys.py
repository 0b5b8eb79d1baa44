"""API keys: creation, restriction, rotation, revocation, and authentication of a bearer token.

Keys are 256-bit random secrets, so a single SHA-256 is the right hash (no salt or slow KDF is
needed against brute force of a random 256-bit value). Only the hash and a short display prefix
are stored. A verified key is cached in-process for `auth_cache_ttl_ms`, which is also the longest
a revoked key keeps working; this keeps authentication off the hot path's round trips.

A key belongs to a client: the client is named by the id of its first key (`client_id`). A
rotated key joins its predecessor's client, and everything that is scoped to "who is asking" and
must survive a rotation (idempotency records, the `api_key_id` stored with what was posted) is
scoped to the client, not to one secret.

Unknown tokens cost a database lookup each, so a flood of bad tokens is kept off the database two
ways (per worker process, in memory). A token that found no key is answered 401 from memory for
`auth_negative_cache_ttl_ms` (a new key's secret is random, so no earlier miss can hide it: a key
works as soon as it is created). And each source address (an IPv6 one by its /64) may make at
most `auth_failure_burst` lookups that find nothing, then `auth_failure_rps` per second: past that
its tokens are refused with 429 and Retry-After, without a lookup, unless they are the hash of an
active key. That is read from memory too: the hashes of all active keys, read again at most once
a second, so a key, even one created during the flood, is not shut out by it.

When each key was last used is noted in memory and written in the background
(`flush_usage`, every `key_usage_flush_ms`): an UPDATE per authenticated request would put a row
lock on the hot path, one that every request of a busy client would queue behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from prometheus_client import Counter

from wallet.domain import errors
from wallet.domain.errors import WalletError
from wallet.domain.rules import AMOUNT_MINOR_CEILING, KeyOperation, Scope, scope_allows
from wallet.settings import Settings

KEY_PREFIX = "wk_"
KEY_DISPLAY_PREFIX_CHARS = 11  # "wk_" and 8 characters of the secret: enough to tell keys apart
MAX_TOKEN_CHARS = 128
AUTH_CACHE_MAX_ENTRIES = 10_000
AUTH_MISS_CACHE_MAX_ENTRIES = 10_000  # tokens that found no key, remembered (oldest dropped first)
AUTH_FAILURE_MAX_ADDRESSES = 10_000  # source addresses whose failed lookups are counted (idem)
# Past this many active keys their hashes are not kept in memory: an address over its limit of
# failed lookups is then refused whatever token it sends, until its limit refills.
AUTH_ACTIVE_KEYS_MAX = 100_000
# The active keys' hashes are read again at most this often (one query for every address at once):
# a key created during a flood from its own address is shut out for at most this long.
AUTH_ACTIVE_KEYS_REREAD_S = 1.0
KEY_NAME_MAX_CHARS = 100
ROTATION_OVERLAP_MAX_SECONDS = 90 * 24 * 3600
RATE_LIMIT_RPS_CEILING = 1_000_000
RATE_LIMIT_BURST_CEILING = 1_000_000

AUTH_QUERIES = Counter(
    "wallet_auth_queries_total",
    "Database queries made to authenticate bearer tokens: one token's lookup, by whether it found "
    "an active key (found, not_found), or a read of all active keys' hashes (active_keys).",
    ["query"],
)
AUTH_REFUSED = Counter(
    "wallet_auth_refused_total",
    "Bearer tokens refused without a database query: a recent miss (401), or a source address "
    "over its limit of failed lookups (429).",
    ["reason"],
)


@dataclass(frozen=True, slots=True)
class KeyRestrictions:
    """Narrower than the scopes: None means no restriction of that kind."""

    asset_codes: frozenset[str] | None = None
    operations: frozenset[KeyOperation] | None = None
    max_amount_minor: int | None = None

    def describe(self) -> str:
        parts = []
        if self.operations is not None:
            parts.append("operations=" + ",".join(sorted(self.operations)))
        if self.asset_codes is not None:
            parts.append("assets=" + ",".join(sorted(self.asset_codes)))
        if self.max_amount_minor is not None:
            parts.append(f"max_amount={self.max_amount_minor}")
        return " ".join(parts) or "-"


@dataclass(frozen=True, slots=True)
class RateLimitOverride:
    """A key's own rate limit; None fields take the service's defaults. rps 0 = no limit."""

    rps: float | None = None
    burst: int | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    api_key_id: int
    name: str
    scopes: frozenset[Scope]
    client_id: int = 0  # the first key of this client; 0 means "this key" (see __post_init__)
    restrictions: KeyRestrictions = KeyRestrictions()
    rate_limit: RateLimitOverride = RateLimitOverride()

    def __post_init__(self) -> None:
        if self.client_id == 0:
            object.__setattr__(self, "client_id", self.api_key_id)

    def require(self, scope: Scope) -> None:
        if not scope_allows(self.scopes, scope):
            raise WalletError(errors.FORBIDDEN, f"this API key lacks the '{scope}' scope")

    def needs_subject(self, amount_known: bool) -> bool:
        """Whether `permit` needs the asset (or amount) of an existing hold or transaction that
        the request only names by id: read only for keys restricted in that way."""
        allowed = self.restrictions
        return allowed.asset_codes is not None or (allowed.max_amount_minor is not None and not amount_known)

    def permit(
        self,
        operation: KeyOperation,
        asset_code: str | None,
        amount_minor: int | None,
        *,
        fee_minor: int = 0,
        field_prefix: str = "",
    ) -> None:
        """Refuses (403) what the key's restrictions exclude. `asset_code` / `amount_minor` are
        None when the request has none (a void has no amount). The maximum amount bounds all that
        one operation moves: a transfer's `fee` is debited from the sender on top of its amount, so
        amount + fee must be within it (the field named is `fee` when the amount alone is)."""
        allowed = self.restrictions
        if allowed.operations is not None and operation not in allowed.operations:
            raise WalletError(
                errors.KEY_OPERATION_NOT_ALLOWED,
                f"this API key may not {operation}; it may only: {', '.join(sorted(allowed.operations))}",
                field_prefix + "type" if field_prefix else None,
            )
        if (
            allowed.asset_codes is not None
            and asset_code is not None
            and asset_code not in allowed.asset_codes
        ):
            raise WalletError(
                errors.KEY_ASSET_NOT_ALLOWED,
                f"this API key may not move {asset_code}; it may only move: "
                + ", ".join(sorted(allowed.asset_codes)),
                field_prefix + "asset_type",
            )
        limit = allowed.max_amount_minor
        if limit is None or amount_minor is None:
            return
        if amount_minor > limit:
            raise WalletError(
                errors.KEY_AMOUNT_OVER_LIMIT,
                f"amount {amount_minor} exceeds this API key's maximum of {limit} per operation",
                field_prefix + "amount",
            )
        if amount_minor + fee_minor > limit:
            raise WalletError(
                errors.KEY_AMOUNT_OVER_LIMIT,
                f"amount {amount_minor} + fee {fee_minor} = {amount_minor + fee_minor} exceeds this API "
                f"key's maximum of {limit} per operation (a fee counts: the sender pays both)",
                field_prefix + "fee",
            )


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What `wallet keys list` shows: never the secret, nor its hash."""

    id: int
    client_id: int
    name: str
    prefix: str
    scopes: tuple[str, ...]
    restrictions: KeyRestrictions
    rate_limit: RateLimitOverride
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None:
            return "expired" if self.expires_at <= datetime.now(UTC) else "expiring"
        return "active"


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


def parse_operations(values: Iterable[str]) -> frozenset[KeyOperation] | None:
    """None (no restriction) for an empty list."""
    parsed = set()
    for value in values:
        try:
            parsed.add(KeyOperation(value))
        except ValueError:
            allowed = ", ".join(o.value for o in KeyOperation)
            raise WalletError(
                errors.INVALID_REQUEST, f"unknown operation '{value}'; allowed: {allowed}", "operation"
            ) from None
    return frozenset(parsed) or None


async def _check_restrictions(conn: asyncpg.Connection, restrictions: KeyRestrictions) -> None:
    if restrictions.asset_codes is not None:
        known = {r["code"] for r in await conn.fetch("SELECT code FROM asset_types")}
        unknown = sorted(restrictions.asset_codes - known)
        if unknown:
            raise WalletError(errors.INVALID_REQUEST, f"unknown asset type(s): {', '.join(unknown)}", "asset")
    if (
        restrictions.max_amount_minor is not None
        and not 1 <= restrictions.max_amount_minor <= AMOUNT_MINOR_CEILING
    ):
        raise WalletError(
            errors.INVALID_REQUEST, f"max amount must be 1 to {AMOUNT_MINOR_CEILING}", "max_amount"
        )


def _check_rate_limit(rate_limit: RateLimitOverride) -> None:
    if rate_limit.rps is not None and not 0 <= rate_limit.rps <= RATE_LIMIT_RPS_CEILING:
        raise WalletError(
            errors.INVALID_REQUEST, f"rate limit must be 0 to {RATE_LIMIT_RPS_CEILING} per second", "rps"
        )
    if rate_limit.burst is not None and not 1 <= rate_limit.burst <= RATE_LIMIT_BURST_CEILING:
        raise WalletError(errors.INVALID_REQUEST, f"burst must be 1 to {RATE_LIMIT_BURST_CEILING}", "burst")


async def create_api_key(
    conn: asyncpg.Connection,
    name: str,
    scopes: Iterable[str],
    *,
    restrictions: KeyRestrictions = KeyRestrictions(),
    rate_limit: RateLimitOverride = RateLimitOverride(),
) -> str:
    """Stores a new key and returns its plaintext, which is never stored or shown again."""
    if not 1 <= len(name) <= KEY_NAME_MAX_CHARS:
        raise WalletError(
            errors.INVALID_REQUEST, f"name must be 1 to {KEY_NAME_MAX_CHARS} characters", "name"
        )
    parsed = parse_scopes(scopes)
    await _check_restrictions(conn, restrictions)
    _check_rate_limit(rate_limit)
    token, _ = await _insert_key(conn, name, [s.value for s in parsed], restrictions, rate_limit, None)
    return token


async def _insert_key(
    conn: asyncpg.Connection,
    name: str,
    scopes: Sequence[str],
    restrictions: KeyRestrictions,
    rate_limit: RateLimitOverride,
    client_key_id: int | None,
) -> tuple[str, int]:
    token = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = await conn.fetchval(
        """
        INSERT INTO api_keys (name, key_prefix, key_sha256, scopes, client_key_id, allowed_asset_codes,
                              allowed_operations, max_amount_minor, rate_limit_rps, rate_limit_burst)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        RETURNING id
        """,
        name,
        token[:KEY_DISPLAY_PREFIX_CHARS],
        _sha256(token),
        list(scopes),
        client_key_id,
        sorted(restrictions.asset_codes) if restrictions.asset_codes is not None else None,
        sorted(restrictions.operations) if restrictions.operations is not None else None,
        restrictions.max_amount_minor,
        rate_limit.rps,
        rate_limit.burst,
    )
    assert isinstance(key_id, int)
    return token, key_id


_KEY_COLUMNS = """
    id, coalesce(client_key_id, id) AS client_id, name, key_prefix, scopes, allowed_asset_codes,
    allowed_operations, max_amount_minor, rate_limit_rps, rate_limit_burst, created_at, last_used_at,
    expires_at, revoked_at
"""


def _restrictions(row: asyncpg.Record) -> KeyRestrictions:
    assets, operations = row["allowed_asset_codes"], row["allowed_operations"]
    return KeyRestrictions(
        asset_codes=frozenset(assets) if assets is not None else None,
        operations=frozenset(KeyOperation(o) for o in operations) if operations is not None else None,
        max_amount_minor=row["max_amount_minor"],
    )


def _rate_limit(row: asyncpg.Record) -> RateLimitOverride:
    return RateLimitOverride(rps=row["rate_limit_rps"], burst=row["rate_limit_burst"])


def _key_info(row: asyncpg.Record) -> KeyInfo:
    return KeyInfo(
        id=row["id"],
        client_id=row["client_id"],
        name=row["name"],
        prefix=row["key_prefix"],
        scopes=tuple(row["scopes"]),
        restrictions=_restrictions(row),
        rate_limit=_rate_limit(row),
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


async def list_api_keys(conn: asyncpg.Connection, *, include_revoked: bool = True) -> list[KeyInfo]:
    rows = await conn.fetch(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE $1 OR revoked_at IS NULL ORDER BY id", include_revoked
    )
    return [_key_info(r) for r in rows]


async def find_api_key(conn: asyncpg.Connection, id_or_prefix: str) -> KeyInfo:
    """A key by its id (digits) or by its display prefix (`wk_` and 8 characters, as listed).
    An ambiguous prefix is refused, naming the ids it matches."""
    if id_or_prefix.isascii() and id_or_prefix.isdigit():
        rows = await conn.fetch(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = $1", int(id_or_prefix))
    elif id_or_prefix.startswith(KEY_PREFIX) and len(id_or_prefix) == KEY_DISPLAY_PREFIX_CHARS:
        rows = await conn.fetch(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_prefix = $1 ORDER BY id", id_or_prefix
        )
    else:
        raise WalletError(
            errors.INVALID_REQUEST,
            f"give a key's id or its {KEY_DISPLAY_PREFIX_CHARS}-character prefix (wk_ and 8 characters) "
            "as `wallet keys list` shows them",
            "key",
        )
    if not rows:
        raise WalletError(errors.NOT_FOUND, f"no API key {id_or_prefix!r}", "key")
    if len(rows) > 1:
        ids = ", ".join(str(r["id"]) for r in rows)
        raise WalletError(
            errors.INVALID_REQUEST, f"prefix {id_or_prefix} matches keys {ids}; use the id", "key"
        )
    return _key_info(rows[0])


async def is_active_api_key(conn: asyncpg.Connection, token: str) -> bool:
    row = await conn.fetchval(
        "SELECT 1 FROM api_keys WHERE key_sha256 = $1 AND revoked_at IS NULL"
        " AND (expires_at IS NULL OR expires_at > now())",
        _sha256(token),
    )
    return row is not None


async def revoke_api_key(conn: asyncpg.Connection, id_or_prefix: str) -> KeyInfo | None:
    """Revokes the key; None if it was revoked already."""
    key = await find_api_key(conn, id_or_prefix)
    row = await conn.fetchrow(
        f"UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING {_KEY_COLUMNS}",
        key.id,
    )
    return _key_info(row) if row is not None else None


@dataclass(frozen=True, slots=True)
class Rotation:
    token: str
    new_key: KeyInfo
    old_key: KeyInfo  # with the end of its overlap in expires_at


async def rotate_api_key(conn: asyncpg.Connection, id_or_prefix: str, overlap_seconds: int) -> Rotation:
    """A new key for the same client (same name, scopes, restrictions and rate limit); the old one
    keeps working for `overlap_seconds`, then stops. Idempotency keys carry over (client scope)."""
    if not 0 <= overlap_seconds <= ROTATION_OVERLAP_MAX_SECONDS:
        raise WalletError(
            errors.INVALID_REQUEST, f"overlap must be 0 to {ROTATION_OVERLAP_MAX_SECONDS} seconds", "overlap"
        )
    async with conn.transaction():
        key = await find_api_key(conn, id_or_prefix)
        old = await conn.fetchrow(
            f"""
            UPDATE api_keys
               SET expires_at = least(coalesce(expires_at, 'infinity'), now() + make_interval(secs => $2))
             WHERE id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
            RETURNING {_KEY_COLUMNS}
            """,
            key.id,
            overlap_seconds,
        )
        if old is None:
            raise WalletError(errors.INVALID_REQUEST, f"API key {key.id} is revoked or expired", "key")
        old_key = _key_info(old)
        token, new_id = await _insert_key(
            conn, key.name, key.scopes, key.restrictions, key.rate_limit, old_key.client_id
        )
        new_key = await find_api_key(conn, str(new_id))
    return Rotation(token, new_key, old_key)


def failure_source(host: str | None) -> str:
    """What failed lookups are counted by: the client's address as the server sees it, an IPv6
    address by its /64 (what one host or site is usually given), an IPv4-mapped one as IPv4."""
    if not host:
        return "-"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class FailedLookupLimit:
    """A token bucket per source address, in memory: `burst` lookups that find no key, refilled at
    `rps` per second (0 = no limit). A lookup takes a token before it runs and gives it back when
    it finds a key, so concurrent requests cannot overshoot the limit either."""

    def __init__(self, burst: int, rps: float, max_addresses: int = AUTH_FAILURE_MAX_ADDRESSES) -> None:
        self.burst = burst
        self.rps = rps
        self._max_addresses = max_addresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def take(self, source: str, now: float) -> float:
        """0 if a token was taken, else the seconds until one will be there."""
        if self.rps <= 0:
            return 0.0
        tokens, at = self._buckets.get(source, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rps)
        wait_s = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait_s = (1 - tokens) / self.rps
        self._buckets[source] = (tokens, now)
        self._buckets.move_to_end(source)
        while len(self._buckets) > self._max_addresses:
            self._buckets.popitem(last=False)  # a forgotten address starts again with a full bucket
        return wait_s

    def give_back(self, source: str) -> None:
        if self.rps <= 0:
            return
        bucket = self._buckets.get(source)
        if bucket is not None:
            self._buckets[source] = (min(float(self.burst), bucket[0] + 1), bucket[1])


class Authenticator:
    """Resolves bearer tokens to callers, with a bounded, time-limited cache of keys and of misses
    and a limit of failed lookups per source address (see the module's docstring), and notes when
    each key was last used (written by `flush_usage`)."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._cache_ttl_s = settings.auth_cache_ttl_ms / 1000
        self._miss_ttl_s = settings.auth_negative_cache_ttl_ms / 1000
        # Keys that authenticated, with when their entry stops being trusted. An entry past that
        # still says the token was a key: it is looked up again, but never refused unseen.
        self._cache: OrderedDict[bytes, tuple[Caller, float]] = OrderedDict()
        self._misses: OrderedDict[bytes, float] = OrderedDict()  # digest -> until when
        self._failures = FailedLookupLimit(settings.auth_failure_burst, settings.auth_failure_rps)
        self._active: frozenset[bytes] | None = None  # active keys' hashes; None: too many to keep
        self._active_read_at = -math.inf
        self._active_lock = asyncio.Lock()
        self._last_used: dict[int, datetime] = {}

    async def authenticate(self, token: str | None, client_host: str | None = None) -> Caller:
        """The caller of `token`, sent from `client_host` (the peer address the server saw)."""
        if not token:
            raise WalletError(errors.UNAUTHENTICATED, "missing 'Authorization: Bearer <api key>' header")
        if len(token) > MAX_TOKEN_CHARS or not token.startswith(KEY_PREFIX):
            raise WalletError(errors.UNAUTHENTICATED, "invalid API key")
        digest = _sha256(token)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            caller = cached[0]
        else:
            caller = await self._look_up(digest, now, known=cached is not None, client_host=client_host)
        self._last_used[caller.api_key_id] = datetime.now(UTC)
        return caller

    async def _look_up(self, digest: bytes, now: float, *, known: bool, client_host: str | None) -> Caller:
        missed_until = self._misses.get(digest)
        if missed_until is not None:
            if missed_until > now:
                AUTH_REFUSED.labels("miss_cached").inc()
                raise WalletError(errors.UNAUTHENTICATED, "invalid, revoked or expired API key")
            del self._misses[digest]
        source = failure_source(client_host)
        reserved = False
        if not known:
            wait_s = self._failures.take(source, now)
            if wait_s > 0 and not await self._is_active(digest):
                AUTH_REFUSED.labels("address_limited").inc()
                raise WalletError(
                    errors.RATE_LIMITED,
                    f"too many failed authentications from this address (at most {self._failures.burst}, "
                    f"then {self._failures.rps:g} per second); retry after Retry-After seconds",
                    retry_after_s=max(1, math.ceil(wait_s)),
                )
            reserved = wait_s == 0
        try:
            caller = await self._load(digest, now)
        except BaseException:
            if reserved:
                self._failures.give_back(source)  # not a failed authentication (database down, ...)
            raise
        if caller is None:
            self._cache.pop(digest, None)
            if self._miss_ttl_s > 0:
                self._misses[digest] = now + self._miss_ttl_s
                self._misses.move_to_end(digest)
                while len(self._misses) > AUTH_MISS_CACHE_MAX_ENTRIES:
                    self._misses.popitem(last=False)
            raise WalletError(errors.UNAUTHENTICATED, "invalid, revoked or expired API key")
        if reserved:
            self._failures.give_back(source)
        return caller

    async def _is_active(self, digest: bytes) -> bool:
        """Whether `digest` is an active key's, from the hashes in memory, read again first when
        they are older than AUTH_ACTIVE_KEYS_REREAD_S (one read at a time, for everyone)."""
        if time.monotonic() - self._active_read_at >= AUTH_ACTIVE_KEYS_REREAD_S:
            async with self._active_lock:
                if time.monotonic() - self._active_read_at >= AUTH_ACTIVE_KEYS_REREAD_S:
                    rows = await self._pool.fetch(
                        """
                        SELECT key_sha256 FROM api_keys
                         WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
                         LIMIT $1
                        """,
                        AUTH_ACTIVE_KEYS_MAX + 1,
                    )
                    AUTH_QUERIES.labels("active_keys").inc()
                    too_many = len(rows) > AUTH_ACTIVE_KEYS_MAX
                    self._active = None if too_many else frozenset(bytes(r[0]) for r in rows)
                    self._active_read_at = time.monotonic()
        return self._active is not None and digest in self._active

    async def _load(self, digest: bytes, now: float) -> Caller | None:
        row = await self._pool.fetchrow(
            f"""
            SELECT {_KEY_COLUMNS}, extract(epoch FROM expires_at - now()) AS expires_in_s
              FROM api_keys
             WHERE key_sha256 = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
            """,
            digest,
        )
        AUTH_QUERIES.labels("not_found" if row is None else "found").inc()
        if row is None:
            return None
        caller = Caller(
            api_key_id=row["id"],
            name=row["name"],
            scopes=frozenset(Scope(s) for s in row["scopes"]),
            client_id=row["client_id"],
            restrictions=_restrictions(row),
            rate_limit=_rate_limit(row),
        )
        ttl_s = self._cache_ttl_s
        if row["expires_in_s"] is not None:
            ttl_s = min(ttl_s, float(row["expires_in_s"]))
        # Kept even with no time to trust it (ttl 0): it marks the token as a key's.
        self._cache[digest] = (caller, now + ttl_s)
        self._cache.move_to_end(digest)
        while len(self._cache) > AUTH_CACHE_MAX_ENTRIES:
            self._cache.popitem(last=False)
        return caller

    async def flush_usage(self) -> int:
        """Writes the noted last uses (one statement; never moves a time backwards)."""
        if not self._last_used:
            return 0
        used, self._last_used = self._last_used, {}
        try:
            await self._pool.execute(
                """
                UPDATE api_keys k SET last_used_at = u.at
                  FROM unnest($1::bigint[], $2::timestamptz[]) AS u(id, at)
                 WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)
                """,
                list(used),
                list(used.values()),
            )
        except BaseException:
            for key_id, at in used.items():  # kept for the next flush
                self._last_used[key_id] = max(at, self._last_used.get(key_id, at))
            raise
        return len(used)
