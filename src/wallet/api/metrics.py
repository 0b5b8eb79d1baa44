"""Prometheus metrics: the outcomes of writes and the time the database spends on them (every
answer by route and status is counted in `wallet.api.observe`), served at `/metrics`, with the
live audit's gauges (wallet.services.audit) read from the newest recorded run at each scrape.

Counting is an increment where the answer is known, so the hot path pays microseconds. With
several workers each process exposes its own counters. `/metrics` asks for
`Authorization: Bearer <WALLET_METRICS_TOKEN>` when that setting is set.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from wallet.api.request_only import RequestOnlyRoute
from wallet.domain import errors
from wallet.domain.errors import WalletError
from wallet.services.audit import refresh_gauges
from wallet.settings import Settings

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

router = APIRouter(tags=["health"], route_class=RequestOnlyRoute)


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
    # The audit gauges from the newest recorded run, whichever process ran it.
    resources = getattr(request.app.state, "resources", None)
    if resources is not None:
        await refresh_gauges(resources.pool)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
