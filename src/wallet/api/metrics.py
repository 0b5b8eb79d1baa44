"""Prometheus metrics: outcomes of writes and the time the database spends on them.

Counting happens where the outcome is known (one dictionary lookup and an increment per write),
so the hot path pays microseconds. With several workers each process exposes its own counters.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

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
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
