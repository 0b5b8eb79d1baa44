"""GET /health: unauthenticated liveness and database reachability, for load balancers."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from wallet.api.dependencies import Pool
from wallet.api.request_only import RequestOnlyRoute
from wallet.api.schemas import HealthOut

router = APIRouter(tags=["health"], route_class=RequestOnlyRoute)

HEALTH_TIMEOUT_S = 2.0


@router.get("/health", response_model=HealthOut, responses={503: {"model": HealthOut}})
async def health(pool: Pool) -> JSONResponse:
    try:
        await pool.fetchval("SELECT 1", timeout=HEALTH_TIMEOUT_S)
    except Exception:  # any failure to reach the database means "not healthy"
        return JSONResponse({"status": "degraded", "database": "unavailable"}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})
