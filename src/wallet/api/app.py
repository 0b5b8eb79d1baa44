"""The ASGI application: routers, error handlers, body limit, and the pool's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import structlog
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from wallet import __version__
from wallet.api import metrics
from wallet.api.body_limit import BodySizeLimit
from wallet.api.dependencies import Resources
from wallet.api.errors import error_responses, install_error_handlers
from wallet.api.head import HeadAsGet
from wallet.api.observe import ObserveRequests
from wallet.api.routes import (
    console,
    events,
    health,
    holds,
    reports,
    transactions,
    users,
    wallets,
    webhooks,
)
from wallet.db.pool import create_pool
from wallet.logging import configure_logging
from wallet.services.api_keys import Authenticator
from wallet.services.audit import run_auditor
from wallet.services.group_commit import GroupCommitter
from wallet.services.holds import run_hold_sweeper
from wallet.services.lots import run_lot_expirer, sync_policies
from wallet.services.rate_limits import create_rate_limiter
from wallet.services.webhooks import Deliverer
from wallet.settings import Settings, get_settings

log = structlog.get_logger("wallet.app")

DESCRIPTION = """
The system of record for virtual credits (Gold Coins, Diamonds, Loyalty Points).
Amounts are integers in the asset's minor unit. Every write needs an idempotency key and is
posted as a balanced double-entry transaction. Errors share one shape:
`{"error": {"code", "message", "field"}}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.database_url:
            raise RuntimeError(
                "WALLET_DATABASE_URL is not set (use `wallet serve` for the embedded database)"
            )
        pool = await create_pool(settings, settings.database_url)
        authenticator = Authenticator(pool, settings.auth_cache_ttl_ms)
        rate_limiter = create_rate_limiter(settings, pool)
        committer = GroupCommitter(
            pool, max_size=settings.group_commit_max_size, max_in_flight=settings.group_commit_max_in_flight
        )
        app.state.resources = Resources(pool, authenticator, rate_limiter, committer)
        if await pool.fetchval("SELECT current_setting('autovacuum')") != "on":
            # Without it nothing refreshes statistics: plans cached while the ledger was small
            # (sequential scans in the ledger's triggers) stay, and each posting slows down in
            # proportion to the history. See docs/PERFORMANCE.md.
            log.warning("autovacuum_off", advice="turn autovacuum on, or ANALYZE the ledger tables regularly")
        # The lot policies the posting functions read come from this process's settings.
        await sync_policies(pool, settings)
        tasks = []
        if settings.lot_expiry_interval_ms:
            tasks.append(asyncio.create_task(run_lot_expirer(pool, settings)))
        if settings.audit_interval_ms:
            tasks.append(asyncio.create_task(run_auditor(pool, settings)))
        if settings.hold_sweep_interval_ms:
            tasks.append(asyncio.create_task(run_hold_sweeper(pool, settings)))
        if settings.key_usage_flush_ms:
            tasks.append(asyncio.create_task(_flush_key_usage(authenticator, settings.key_usage_flush_ms)))
        # Webhook delivery (wallet.services.webhooks): polls, and works only when endpoints exist.
        deliverer = (
            Deliverer(pool, settings, settings.database_url) if settings.webhook_poll_interval_ms else None
        )
        app.state.webhook_deliverer = deliverer
        if deliverer is not None:
            deliverer.start()
        try:
            yield
        finally:
            if deliverer is not None:
                await deliverer.close()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await committer.drain()
            with contextlib.suppress(Exception):
                await authenticator.flush_usage()
            await rate_limiter.close()
            await pool.close()

    # Swagger UI and ReDoc with their assets served by the service itself, not from a CDN.
    app = FastAPIOffline(
        title="Wallet service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # Protocol-level answers any route can give, declared once for all of them.
        responses=error_responses(405, 408, 500),
        # OpenTelemetry traces, metrics and logs (FastAPI's own instrumentation), exported over
        # OTLP/HTTP when the standard OTEL_EXPORTER_OTLP_ENDPOINT is set; nothing otherwise.
        telemetry={"auto_configure": True},
    )
    app.state.settings = settings
    # A trailing slash is not redirected: the redirect would be built from the Host header.
    app.router.redirect_slashes = False
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(transactions.router)
    app.include_router(wallets.router)
    app.include_router(reports.router)
    app.include_router(users.router)
    app.include_router(holds.router)
    app.include_router(events.router)
    app.include_router(webhooks.router)
    app.include_router(console.router)  # the operator console at /console and its reads
    app.add_middleware(
        BodySizeLimit,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_ms=settings.request_body_timeout_ms,
    )
    app.add_middleware(HeadAsGet)
    app.add_middleware(ObserveRequests, access_log=settings.access_log)
    _publish_configured_limits(app, settings)
    return app


async def _flush_key_usage(authenticator: Authenticator, interval_ms: int) -> None:
    """Writes when each key was last used, from memory, every `interval_ms` (see api_keys)."""
    while True:
        await asyncio.sleep(interval_ms / 1000)
        try:
            await authenticator.flush_usage()
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("key_usage_flush_failed", error=str(exc))


def _publish_configured_limits(app: FastAPI, settings: Settings) -> None:
    """The request models carry hard bounds; the configured limits (WALLET_MAX_*) are tighter and
    set at start-up. Patch them into the OpenAPI document so clients and contract tests see the
    bounds the service really enforces."""
    generate = app.openapi

    def openapi() -> dict:  # type: ignore[type-arg]
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        components = schema.get("components", {}).get("schemas", {})
        for name in (
            "PostingBody",
            "BonusBody",
            "BatchOperation",
            "HoldBody",
            "TransferBody",
            "CaptureBody",
            "ReverseBody",
        ):
            properties = components.get(name, {}).get("properties", {})
            for field in ("amount", "fee"):
                for option in [properties.get(field, {}), *properties.get(field, {}).get("anyOf", [])]:
                    if option.get("type") == "integer":
                        option["maximum"] = settings.max_amount_minor
            for field in ("description", "reason"):
                for option in properties.get(field, {}).get("anyOf", []):
                    if option.get("type") == "string":
                        option["maxLength"] = settings.max_description_chars
        expires = components.get("HoldBody", {}).get("properties", {}).get("expires_in_seconds", {})
        for option in expires.get("anyOf", []):
            if option.get("type") == "integer":
                option["maximum"] = settings.hold_expires_in_seconds_max
        batch = components.get("BatchBody", {}).get("properties", {}).get("operations", {})
        if batch:
            batch["maxItems"] = settings.max_batch_operations
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
