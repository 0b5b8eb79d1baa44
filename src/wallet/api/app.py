"""The ASGI application: routers, error handlers, the request middleware and the pool's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI
from starlette.types import ASGIApp

from wallet import __version__
from wallet.api import metrics
from wallet.api.dependencies import Resources
from wallet.api.docs import add_offline_docs
from wallet.api.documents import DocumentResponse
from wallet.api.errors import error_responses, install_error_handlers
from wallet.api.observe import ObserveRequests
from wallet.api.route_table import add_routes
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
from wallet.api.write_bodies import write_bodies
from wallet.db.pool import create_pool, create_session_pool, session_settings_differences, wait_for_database
from wallet.logging import configure_logging
from wallet.services.api_keys import Authenticator
from wallet.services.audit import run_auditor
from wallet.services.balance_reads import BalanceReader
from wallet.services.group_commit import GroupCommitter
from wallet.services.holds import run_hold_sweeper
from wallet.services.lots import run_lot_expirer, sync_policies
from wallet.services.rate_limits import create_rate_limiter
from wallet.services.rollup import run_roller
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
        if _traced(app):
            _trace_queries()
        await wait_for_database(settings, settings.database_url)
        pool = await create_pool(settings, settings.database_url)
        authenticator = Authenticator(pool, settings)
        rate_limiter = create_rate_limiter(settings, pool)
        committer = GroupCommitter(
            pool, max_size=settings.group_commit_max_size, max_in_flight=settings.group_commit_max_in_flight
        )
        balance_reader = BalanceReader(
            pool, max_size=settings.balance_read_max_size, max_in_flight=settings.balance_read_max_in_flight
        )
        # The audit's turn is a session lock: on a direct connection when a pooler is in between.
        session_pool = (
            await create_session_pool(settings, settings.database_url, "wallet-audit")
            if settings.direct_database_url
            else None
        )
        # Reports are few: a quarter of the pool's connections for them.
        read_settings = settings.model_copy(
            update={"db_pool_min_size": 1, "db_pool_max_size": max(2, settings.db_pool_max_size // 4)}
        )
        read_pool = (
            await create_pool(read_settings, settings.read_database_url)
            if settings.read_database_url
            else None
        )
        app.state.resources = Resources(
            pool, authenticator, rate_limiter, committer, balance_reader, session_pool, read_pool
        )
        if not settings.db_startup_parameters:
            differences = await session_settings_differences(settings, pool)
            if differences:
                # Without them nothing bounds a request's locks and statements.
                log.warning(
                    "session_settings_missing",
                    differences=differences,
                    advice="run `wallet role-settings` (WALLET_DB_STARTUP_PARAMETERS=0 expects them on the role)",
                )
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
        if settings.rollup_interval_ms:
            tasks.append(asyncio.create_task(run_roller(pool, settings)))
        if settings.audit_interval_ms:
            tasks.append(asyncio.create_task(run_auditor(session_pool or pool, settings)))
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
        # What exists now (the application, its routes, models and OpenAPI machinery, the pool)
        # lives as long as the process: out of the cyclic collector's way. Each full collection
        # otherwise walked these ~100,000 objects, 50-150 ms during which every request of the
        # worker waits (a cause of the p99 at 64 connections, see docs/PERFORMANCE.md).
        gc.collect()
        gc.freeze()
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
            await balance_reader.drain()
            with contextlib.suppress(Exception):
                await authenticator.flush_usage()
            await rate_limiter.close()
            for extra in (session_pool, read_pool):
                if extra is not None:
                    await extra.close()
            await pool.close()

    app = WalletApp(
        settings,
        title="Wallet service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # Protocol-level answers any route can give, declared once for all of them.
        responses=error_responses(405, 408, 500),
        # Every JSON answer in the one documented key order (wallet.api.documents).
        default_response_class=DocumentResponse,
        # OpenTelemetry traces, metrics and logs (FastAPI's own instrumentation), exported over
        # OTLP/HTTP when the standard OTEL_EXPORTER_OTLP_ENDPOINT is set; otherwise not even its
        # middleware, a layer every request would pass through for nothing.
        telemetry={"auto_configure": True} if _otlp_endpoint_set() else None,
        # Swagger UI and ReDoc are added below, with their assets served by the service itself.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    # A trailing slash is not redirected: the redirect would be built from the Host header.
    app.router.redirect_slashes = False
    install_error_handlers(app)
    # The request models of writes carry this configuration's limits (wallet.api.write_bodies).
    bodies = write_bodies(settings)
    key_chars = settings.max_idempotency_key_chars
    # One flat table of routes (wallet.api.route_table), in this order.
    for router in (
        health.router,
        metrics.router,
        transactions.router(bodies, key_chars),
        wallets.router,
        reports.router,
        users.router,
        holds.router(bodies, key_chars),
        events.router,
        webhooks.router,
        *console.routers,  # the operator console at /console and its reads
    ):
        add_routes(app, router)
    # After the service's routes: every request is matched against the routes before its own.
    add_offline_docs(app)
    return app


class WalletApp(FastAPI):
    """FastAPI with the one request middleware (`ObserveRequests`: request id, metrics, access
    log, HEAD, body limit) outside all of Starlette's own layers, so that every answer, Starlette's
    own 500 included, carries the request id and is counted."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        self._edge_settings = settings
        super().__init__(**options)

    def build_middleware_stack(self) -> ASGIApp:
        settings = self._edge_settings
        return ObserveRequests(
            super().build_middleware_stack(),
            access_log=settings.access_log,
            max_body_bytes=settings.max_body_bytes,
            body_timeout_ms=settings.request_body_timeout_ms,
        )


def _otlp_endpoint_set() -> bool:
    """OTEL_EXPORTER_OTLP_ENDPOINT, or a signal's own (..._TRACES_ENDPOINT and the like)."""
    return any(
        k.startswith("OTEL_EXPORTER_OTLP") and k.endswith("ENDPOINT") and v for k, v in os.environ.items()
    )


def _trace_queries() -> None:
    """Each database query a span (OpenTelemetry's asyncpg instrumentation), a child of the span
    current where it runs: the request's, for the queries a request makes itself. Only when
    traces are exported, so an untraced service pays nothing per query. Statements are recorded,
    their parameters never (they hold users' data and key hashes)."""
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    instrumentor = AsyncPGInstrumentor(capture_parameters=False)  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def _traced(app: FastAPI) -> bool:
    """Whether FastAPI's own OpenTelemetry instrumentation is exporting (it has no public flag)."""
    telemetry = getattr(app, "_native_telemetry", None)
    return telemetry is not None and bool(telemetry.enabled())


async def _flush_key_usage(authenticator: Authenticator, interval_ms: int) -> None:
    """Writes when each key was last used, from memory, every `interval_ms` (see api_keys)."""
    while True:
        await asyncio.sleep(interval_ms / 1000)
        try:
            await authenticator.flush_usage()
        except Exception as exc:  # a failover, a lost connection: the next flush writes it
            log.warning("key_usage_flush_failed", error=type(exc).__name__, detail=str(exc)[:200])
