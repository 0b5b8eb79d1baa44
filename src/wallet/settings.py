"""Every tunable and every limit of the service, in one object read from `WALLET_*` variables.

Limits live here rather than next to the code that enforces them so an operator can see, in one
place, every bound the service puts on its callers and on itself (TigerBeetle's "put a limit on
everything"). Units are part of each name.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from wallet.domain.rules import (
    AMOUNT_MINOR_CEILING,
    BATCH_OPERATIONS_CEILING,
    DESCRIPTION_MAX_CHARS,
    IDEMPOTENCY_KEY_MAX_CHARS,
    LOT_EXPIRY_SECONDS_CEILING,
    METADATA_MAX_BYTES,
    PAGE_SIZE_CEILING,
    SpendOrder,
)


class LotPolicy(BaseModel):
    """One asset's credit lots: which lots a debit draws first, and how long credits of each origin
    last when the credit does not say (None: they do not expire)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spend_order: SpendOrder = SpendOrder.GRANTED_FIRST
    purchased_expires_in_seconds: int | None = Field(default=None, ge=1, le=LOT_EXPIRY_SECONDS_CEILING)
    granted_expires_in_seconds: int | None = Field(default=None, ge=1, le=LOT_EXPIRY_SECONDS_CEILING)


AUDIT_QUERY_TIMEOUT_MS_DEFAULT = 600_000  # see Settings.audit_query_timeout_ms
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")  # WALLET_LOG_LEVEL, any case
# WALLET_WORKER_HEARTBEAT_TIMEOUT_S, when not 0: workers beat four times a second (wallet.workers),
# and a loop may wake late on a busy machine.
MIN_HEARTBEAT_TIMEOUT_S = 1.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WALLET_", extra="ignore")

    # Where the ledger lives. Unset: `wallet serve` starts the embedded PostgreSQL in `data_dir`.
    database_url: str | None = None
    data_dir: Path = Path(".wallet-data")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    # Connection pool (per worker process).
    db_pool_min_size: int = Field(default=4, ge=1, le=200)
    db_pool_max_size: int = Field(default=16, ge=1, le=200)
    # A connection above db_pool_min_size that stays idle this long is closed (asyncpg's default):
    # a burst's connections go back to the server once it is over.
    db_pool_idle_timeout_ms: int = Field(default=300_000, ge=100, le=3_600_000)
    # A request that waits longer than this for a row lock gives up with 503 instead of queueing.
    db_lock_timeout_ms: int = Field(default=2_000, ge=10, le=60_000)
    db_statement_timeout_ms: int = Field(default=5_000, ge=100, le=600_000)
    db_idle_in_transaction_timeout_ms: int = Field(default=10_000, ge=100, le=600_000)
    db_connect_timeout_ms: int = Field(default=10_000, ge=100, le=120_000)
    # High availability and poolers (README, "Cluster"; docs/SCALING.md). WALLET_DATABASE_URL may
    # name several hosts, `postgresql://h1:p1,h2:p2,h3:p3/db?target_session_attrs=read-write`:
    # each connection goes to the one that takes writes. Behind pgbouncer in transaction mode set
    # the statement cache to 0 (prepared statements do not survive a change of server connection)
    # and WALLET_DB_STARTUP_PARAMETERS=0 (pgbouncer refuses lock_timeout and the others at
    # connect; `wallet role-settings` sets them on the role instead), and give
    # WALLET_DIRECT_DATABASE_URL, a connection that bypasses the pooler, for what holds session
    # state: the migrations' lock, the webhook deliverer's locks and the audit's turn.
    db_statement_cache_size: int = Field(default=100, ge=0, le=100_000)
    db_startup_parameters: bool = True
    direct_database_url: str | None = None
    # A streaming replica (or a pooler in front of several) for reads that may be stale: the
    # liability and volume reports, `wallet report liabilities`. Their answers carry the replica's
    # lag (X-Wallet-Read-Lag-Seconds; a line on stderr). Unset: they read the primary.
    read_database_url: str | None = None
    # At start-up (`wallet migrate`, each worker of `wallet serve`) a database that does not accept
    # connections yet is retried, with backoff, for up to this long (0: fail at the first refusal).
    db_startup_wait_ms: int = Field(default=60_000, ge=0, le=3_600_000)

    # Money and payload limits. Amounts are integers in the asset's minor unit.
    max_amount_minor: int = Field(default=1_000_000, ge=1, le=AMOUNT_MINOR_CEILING)
    # Slow clients: a body must arrive in full within this, and each worker serves at most this
    # many connections at once (more get 503 from uvicorn). Put a proxy in front for the rest.
    request_body_timeout_ms: int = Field(default=10_000, ge=100, le=300_000)
    max_connections_per_worker: int = Field(default=1_000, ge=1, le=100_000)
    # Hung workers (`wallet serve --workers N`, N of 2 or more; wallet.workers): each worker's event
    # loop beats four times a second, and the supervisor kills (SIGKILL) and replaces, on the same
    # socket, a worker whose last beat is older than this: a blocked event loop or a stopped
    # process, not only a dead one. Judged from a worker's first beat, once it serves (its start is
    # bounded by WALLET_DB_STARTUP_WAIT_MS). 0: not checked; otherwise at least 1 s. Keep it well
    # above the longest a busy machine may keep a worker from running.
    worker_heartbeat_timeout_s: float = Field(default=30.0, ge=0, le=3_600)
    max_body_bytes: int = Field(default=16_384, ge=1_024, le=1_048_576)
    max_metadata_bytes: int = Field(default=4_096, ge=0, le=METADATA_MAX_BYTES)
    max_description_chars: int = Field(default=500, ge=0, le=DESCRIPTION_MAX_CHARS)
    max_idempotency_key_chars: int = Field(
        default=IDEMPOTENCY_KEY_MAX_CHARS, ge=8, le=IDEMPOTENCY_KEY_MAX_CHARS
    )
    max_batch_operations: int = Field(default=100, ge=1, le=BATCH_OPERATIONS_CEILING)

    # Holds: how long one lasts when the caller does not say, and at most. Expired holds stop
    # counting at once; a task in each worker marks them expired every sweep interval, at most
    # this many accounts per sweep.
    hold_expires_in_seconds_default: int = Field(default=900, ge=1, le=30 * 24 * 3600)
    hold_expires_in_seconds_max: int = Field(default=7 * 24 * 3600, ge=1, le=30 * 24 * 3600)
    hold_sweep_interval_ms: int = Field(default=5_000, ge=0, le=3_600_000)  # 0 = no sweep task
    hold_sweep_max_accounts: int = Field(default=500, ge=1, le=100_000)

    # Lists never return unbounded results.
    page_size_default: int = Field(default=50, ge=1, le=PAGE_SIZE_CEILING)
    page_size_max: int = Field(default=200, ge=1, le=PAGE_SIZE_CEILING)

    # Stored idempotency responses are kept this long; `wallet prune-idempotency` deletes older ones.
    idempotency_retention_hours: int = Field(default=24, ge=1, le=24 * 365)

    # A verified API key is trusted this long before it is looked up again (revocation delay).
    auth_cache_ttl_ms: int = Field(default=5_000, ge=0, le=600_000)
    # Unknown bearer tokens (wallet.services.api_keys), per worker process: a token that found no
    # key is refused from memory this long.
    auth_negative_cache_ttl_ms: int = Field(default=5_000, ge=100, le=600_000)
    # Lookups that find no key, per source address (IPv6: per /64): this many at once, refilled at
    # this rate (0 = no limit). Past it the address's unknown tokens get 429, without a lookup.
    auth_failure_burst: int = Field(default=20, ge=1, le=1_000_000)
    auth_failure_rps: float = Field(default=1.0, ge=0, le=1_000_000)

    # Group commit (single top-ups, bonuses and spends): at most this many writes per group call
    # (1 = off: each write is its own call), and at most this many group calls in flight per
    # worker; writes arriving while they are all busy wait and go together in the next one. One
    # in flight gives the largest groups, so the fewest commits and round trips: measured with 2
    # workers at 16 and 64 connections, 1 beat 2 and 4 in throughput and in p95/p99 (the
    # database's CPU per write is the limit; docs/PERFORMANCE.md, issue 8).
    group_commit_max_size: int = Field(default=64, ge=1, le=1_000)
    group_commit_max_in_flight: int = Field(default=1, ge=1, le=200)
    # The same for balance reads (all of a user's balances, now; wallet.services.balance_reads):
    # at most this many reads per query, at most this many queries in flight per worker. With 2
    # workers, 1 in flight gave 3,355 and 3,820 reads/s at 16 and 64 connections, 2 gave 2,383 and
    # 3,399, 4 gave 2,733 and 3,249 (p99 11/28 ms against 51-60/42-160); docs/PERFORMANCE.md.
    balance_read_max_size: int = Field(default=64, ge=1, le=1_000)
    balance_read_max_in_flight: int = Field(default=1, ge=1, le=200)

    # Per-client rate limits (token bucket, one for all of a client's keys, so a rotation's old and
    # new key share it): WALLET_RATE_LIMIT_RPS requests per second on average, in
    # bursts of up to WALLET_RATE_LIMIT_BURST (0 = as many as one second's rate). 0 rps = off. A key
    # may override both (`wallet keys create --rate-limit-rps`). The buckets are shared by every
    # worker and instance through the store: PostgreSQL (the default, embedded included) or Redis.
    rate_limit_rps: float = Field(default=0, ge=0, le=1_000_000)
    rate_limit_burst: int = Field(default=0, ge=0, le=1_000_000)
    rate_limit_store: Literal["postgres", "redis"] = "postgres"
    redis_url: str = "redis://127.0.0.1:6379/0"

    # When each key was last used is written from memory this often (0 = only at shutdown).
    key_usage_flush_ms: int = Field(default=10_000, ge=0, le=3_600_000)

    # When set, /metrics asks for `Authorization: Bearer <this>`.
    metrics_token: str | None = Field(default=None, min_length=16)

    log_level: str = "INFO"
    log_json: bool = False
    # One structured line per request (method, route, status, duration, API key name) at INFO.
    access_log: bool = True

    # Change events and webhooks (see wallet.services.events and wallet.services.webhooks).
    # `wallet prune-events` deletes events older than this (never one a webhook endpoint has not
    # got past yet), at most `event_prune_batch` per statement.
    event_retention_hours: int = Field(default=7 * 24, ge=1, le=24 * 3650)
    event_prune_batch: int = Field(default=10_000, ge=1, le=1_000_000)
    # Each worker looks for endpoints with something to deliver this often (0 = this process
    # delivers nothing). With no endpoint registered that is one cheap query per interval.
    webhook_poll_interval_ms: int = Field(default=1_000, ge=0, le=3_600_000)
    # One delivery (connect, send, answer) must finish within this, or it counts as failed.
    webhook_timeout_ms: int = Field(default=5_000, ge=100, le=120_000)
    # Failed attempts at one event before it is dead-lettered for that endpoint and delivery moves
    # on; between attempts an exponential backoff from base to cap, with jitter (half to all of it).
    webhook_max_attempts: int = Field(default=15, ge=1, le=100)
    webhook_backoff_base_ms: int = Field(default=1_000, ge=1, le=3_600_000)
    webhook_backoff_cap_ms: int = Field(default=600_000, ge=1, le=86_400_000)
    # Endpoints one worker delivers to at once (one database connection each while it does), and
    # events one endpoint gets per turn before the others get a chance.
    webhook_max_concurrency: int = Field(default=4, ge=1, le=64)
    webhook_events_per_turn: int = Field(default=500, ge=1, le=100_000)
    # Registered endpoints, at most.
    webhook_max_endpoints: int = Field(default=100, ge=1, le=10_000)

    # Credit lots (wallet.services.lots), per asset code, as JSON in WALLET_LOT_POLICIES. An asset
    # not listed spends granted before purchased and its credits do not expire. Written to the
    # database by `wallet serve`, `wallet migrate` and `wallet expire` (the posting functions read
    # it there), so every process that starts should be given the same value.
    lot_policies: dict[str, LotPolicy] = Field(
        default_factory=lambda: {"LOYALTY_POINTS": LotPolicy(granted_expires_in_seconds=365 * 24 * 3600)}
    )
    # Each worker expires due lots this often (0 = no task; `wallet expire` does it by hand), at
    # most this many accounts per database transaction and per run.
    lot_expiry_interval_ms: int = Field(default=30_000, ge=0, le=86_400_000)
    lot_expiry_accounts_per_transaction: int = Field(default=100, ge=1, le=10_000)
    lot_expiry_max_accounts_per_run: int = Field(default=10_000, ge=1, le=10_000_000)
    # Each worker brings the reports' per-day totals (wallet.services.rollup) up to date this often
    # (0 = no task: the reports then read every row not rolled up yet, slower, with the same
    # figures), with transactions older than audit_settle_ms, at most this many per chunk, resting
    # after each chunk as long as it took.
    rollup_interval_ms: int = Field(default=10_000, ge=0, le=86_400_000)
    rollup_chunk_transactions: int = Field(default=10_000, ge=1, le=1_000_000)
    # Each worker runs an incremental audit this often (0 = only when asked: GET /api/v1/audit);
    # the processes take turns, each run picks up where the previous one ended.
    audit_interval_ms: int = Field(default=60_000, ge=0, le=86_400_000)
    # The live audit (GET /api/v1/audit) checks transactions older than this; newer ones wait for
    # the next run, so one still committing (at most the statement timeout) is never skipped.
    audit_settle_ms: int = Field(default=10_000, ge=0, le=3_600_000)
    # An incremental audit checks at most this many transactions per chunk: one snapshot, one
    # audit_runs row, the checkpoint moved (a run stopped midway resumes from its last chunk).
    audit_chunk_transactions: int = Field(default=10_000, ge=1, le=1_000_000)
    # The periodic audit rests after each chunk (whichever process ran it) as long as the chunk
    # took, and at least this long: catching up on a backlog, the processes together audit at
    # most half the time, the rest of the CPU left to requests.
    audit_chunk_pause_ms: int = Field(default=100, ge=0, le=60_000)
    # Each query of an audit run and of `wallet verify` (they read a long range or the whole
    # ledger), in the database and on the client: far above WALLET_DB_STATEMENT_TIMEOUT_MS, which
    # bounds requests. With the request bound, one check slower than 6 s on a large ledger failed
    # the run, and the next incremental run had an even longer range to check.
    audit_query_timeout_ms: int = Field(default=AUDIT_QUERY_TIMEOUT_MS_DEFAULT, ge=1_000, le=86_400_000)

    def session_database_url(self, database_url: str) -> str:
        """Where session state goes: WALLET_DIRECT_DATABASE_URL when set, else `database_url`."""
        return self.direct_database_url or database_url

    # Settings a process would otherwise take and fail on later, in a worker or at the first request.
    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.upper()

    @field_validator("worker_heartbeat_timeout_s")
    @classmethod
    def _heartbeat_slack(cls, value: float) -> float:
        if 0 < value < MIN_HEARTBEAT_TIMEOUT_S:
            raise ValueError(f"must be 0 (not checked) or at least {MIN_HEARTBEAT_TIMEOUT_S:g} s")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if value.partition("://")[0] not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _hold_default_within_max(self) -> Settings:
        """The request model bounds a hold's given expiry by the maximum; the default must be
        within it too, or a hold without one would last longer than the maximum."""
        if self.hold_expires_in_seconds_default > self.hold_expires_in_seconds_max:
            raise ValueError(
                "WALLET_HOLD_EXPIRES_IN_SECONDS_DEFAULT must not exceed WALLET_HOLD_EXPIRES_IN_SECONDS_MAX"
            )
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
