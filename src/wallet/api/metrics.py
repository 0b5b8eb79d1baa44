"""Prometheus metrics: every answer the service gives (by method, route template and status,
whatever produced it: a route, an error handler, a middleware such as the body limit), the
outcomes of writes, and the time the database spends on them.

Counting is an increment where the answer is known, so the hot path pays microseconds. With
several workers each process exposes its own counters. `/metrics` asks for
`Authorization: Bearer <WALLET_METRICS_TOKEN>` when that setting is set.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wallet.domain import errors
from wallet.domain.errors import WalletError
from wallet.settings import Settings

RESPONSES = Counter(
    "wallet_http_responses_total",
    "Every answer, by method, route template (or 'unmatched') and HTTP status.",
    ["method", "route", "status"],
)

POSTINGS = Counter(
    "wallet_postings_total",
    "Write requests answered, by kind, HTTP status and whether it was an idempotent replay.",
    ["kind", "status", "replayed"],
)
POSTING_SECONDS = Histogram(
    "wallet_posting_seconds",
    "Time to post a write: limit checks plus the single database round trip.",
    ["kind"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    settings = request.app.state.settings
    assert isinstance(settings, Settings)
    if settings.metrics_token:
        sent = request.headers.get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {settings.metrics_token}".encode()):
            raise WalletError(
                errors.UNAUTHENTICATED, "/metrics needs 'Authorization: Bearer <WALLET_METRICS_TOKEN>'"
            )
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class CountResponses:
    """Counts every response by its route template, so labels stay bounded whatever the path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                RESPONSES.labels(scope["method"], _route_of(scope), message["status"]).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


def _route_of(scope: Scope) -> str:
    """The template of the route that answered; the router records it in the request's scope
    (a dict shared down the stack). A path no route matched is 'unmatched'."""
    route = scope.get("route")
    return str(getattr(route, "path", "unmatched"))
