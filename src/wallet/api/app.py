"""The ASGI application: routers, error handlers, the request middleware, the hot routes' dispatch,
and the pool's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Receive, Scope, Send

from wallet import __version__
from wallet.api import metrics
from wallet.api.dependencies import Resources
from wallet.api.documents import DocumentResponse
from wallet.api.errors import error_responses, install_error_handlers
from wallet.api.fast_path import HotRoute, HotRoutes, fast_handler_of
from wallet.api.json_body import ExactJSONRequest, ExactJSONRoute
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
from wallet.db.pool import create_pool, create_session_pool, session_settings_differences, wait_for_database
from wallet.logging import configure_logging
from wallet.services.api_keys import Authenticator
from wallet.services.audit import run_auditor
from wallet.services.balance_reads import BalanceReader
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

    # Swagger UI and ReDoc with their assets served by the service itself, not from a CDN.
    app = FastAPIOffline(
        title="Wallet service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # Protocol-level answers any route can give, declared once for all of them.
        responses=error_responses(405, 408, 500),
        # Every JSON answer in the one documented key order (wallet.api.documents).
        default_response_class=DocumentResponse,
        # OpenTelemetry traces, metrics and logs (FastAPI's own instrumentation), exported over
        # OTLP/HTTP when the standard OTEL_EXPORTER_OTLP_ENDPOINT is set; nothing otherwise.
        telemetry={"auto_configure": True},
    )
    # FastAPIOffline builds a plain FastAPI; the service's entry (see WalletApp) is a subclass with
    # no state of its own, so the instance takes that class.
    app.__class__ = WalletApp
    assert isinstance(app, WalletApp)
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
    app.edge = ObserveRequests(
        HotRoutes(app, app.full, _hot_routes(app), traced=lambda: _traced(app)),
        access_log=settings.access_log,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_ms=settings.request_body_timeout_ms,
    )
    _coalesce_response_writes()
    _publish_configured_limits(app, settings)
    return app


class WalletApp(FastAPI):
    """FastAPI, entered through `edge` for HTTP: the one request middleware (`ObserveRequests`:
    request id, metrics, access log, HEAD, body limit) around the hot routes' dispatch
    (`HotRoutes`), which hands every other request to the whole FastAPI application (`full`).
    py-spy on the hot routes: Starlette's and FastAPI's layers (middleware stack, matching through
    the included routers, exception wrappers) cost about as much as the route's own work."""

    edge: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.edge is not None and scope["type"] == "http":
            await self.edge(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def full(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The whole FastAPI application, as without `edge`."""
        await super().__call__(scope, receive, send)


def _hot_routes(app: FastAPI) -> list[HotRoute]:
    """The routes marked with a fast handler, as the application's router sees them. Those routes'
    paths are all in routers included without a prefix of their own (checked here)."""
    hot: list[HotRoute] = []
    for context in _route_contexts(app.router.routes):
        route = context.original_route
        if not isinstance(route, APIRoute):
            continue
        fast = fast_handler_of(route)
        if fast is None:
            continue
        if (
            context.path_format != route.path_format
            or context.param_convertors.keys() != route.param_convertors.keys()
        ):
            raise RuntimeError(
                f"fast-path route {route.path} is included under a prefix; HotRoutes would miss it"
            )
        request_class: type[Request] = ExactJSONRequest if isinstance(route, ExactJSONRoute) else Request
        hot.extend(HotRoute(route, method, fast, request_class) for method in sorted(route.methods or ()))
    return hot


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


def _route_contexts(routes: list[Any]) -> list[Any]:
    """Every route with its effective path (FastAPI keeps included routers as `_IncludedRouter`s,
    each with the effective contexts of its routes)."""
    found = []
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:
            found.extend(contexts())
    return found


class _CoalescingTransport:
    """A connection's transport whose writes within one turn of the event loop go out as one.

    uvicorn writes a response's status line and headers, then its body: two `send` system calls
    per response, about a sixth of a worker's CPU on the hot routes (py-spy, on this VM). Here
    they are joined and written once, at the end of the loop's current turn, in order."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = loop

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def writelines(self, lines: list[bytes]) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(d) for d in self._pending)

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _coalesce_response_writes() -> None:
    """Gives uvicorn's HTTP connections (httptools) the coalescing transport above."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is a pinned dependency of the service
        return
    if getattr(HttpToolsProtocol, "_wallet_coalesced", False):
        return
    original = HttpToolsProtocol.connection_made

    def connection_made(self: HttpToolsProtocol, transport: asyncio.Transport) -> None:
        coalescing = _CoalescingTransport(transport, asyncio.get_running_loop())
        original(self, coalescing)  # type: ignore[arg-type]

    HttpToolsProtocol.connection_made = connection_made  # type: ignore[method-assign]
    HttpToolsProtocol._wallet_coalesced = True  # type: ignore[attr-defined]


async def _flush_key_usage(authenticator: Authenticator, interval_ms: int) -> None:
    """Writes when each key was last used, from memory, every `interval_ms` (see api_keys)."""
    while True:
        await asyncio.sleep(interval_ms / 1000)
        try:
            await authenticator.flush_usage()
        except Exception as exc:  # a failover, a lost connection: the next flush writes it
            log.warning("key_usage_flush_failed", error=type(exc).__name__, detail=str(exc)[:200])


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
