"""GET /health: unauthenticated liveness and database reachability, for load balancers, with the
version of the service answering (the package's, as `wallet --version` prints it)."""

from __future__ import annotations

from fastapi import APIRouter

from wallet import __version__
from wallet.api.dependencies import Pool
from wallet.api.documents import DocumentResponse
from wallet.api.schemas import HealthOut

router = APIRouter(tags=["health"])

HEALTH_TIMEOUT_S = 2.0


@router.get("/health", response_model=HealthOut, responses={503: {"model": HealthOut}})
async def health(pool: Pool) -> DocumentResponse:
    try:
        await pool.fetchval("SELECT 1", timeout=HEALTH_TIMEOUT_S)
    except Exception:  # any failure to reach the database means "not healthy"
        return DocumentResponse(
            {"status": "degraded", "database": "unavailable", "version": __version__}, status_code=503
        )
    return DocumentResponse({"status": "ok", "database": "ok", "version": __version__})
