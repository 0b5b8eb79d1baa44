"""GET /api/v1/reports/liabilities: what users hold, paid for or given, and the period's flows."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from wallet.api.dependencies import READ_LAG_HEADER, ReadPool, requires, resources_of
from wallet.api.documents import DocumentResponse
from wallet.api.errors import error_responses
from wallet.api.params import Instant
from wallet.db.pool import replica_lag_s
from wallet.domain.rules import Scope
from wallet.services.api_keys import Caller
from wallet.services.lots import ReportPeriod, liability_report

router = APIRouter(prefix="/api/v1/reports", tags=["reports"])


class AssetLiabilities(BaseModel):
    asset_type: str
    outstanding_purchased: int = Field(
        description="Held by users as of as_of and paid for: deferred revenue."
    )
    outstanding_granted: int = Field(description="Held by users as of as_of and given (promotional).")
    issued_purchased: int = Field(description="Credited by top-ups in [from, to) (less debts they repaid).")
    issued_granted: int = Field(description="Credited by bonuses in [from, to) (less debts they repaid).")
    spent: int = Field(description="Drawn by spends and captures in [from, to).")
    refunded: int = Field(description="Given back by refunds in [from, to).")
    expired: int = Field(description="Moved to SYSTEM_BREAKAGE by expiries in [from, to).")
    clawed_back: int = Field(description="Taken back by clawbacks in [from, to).")
    transfer_fees: int = Field(description="Paid as transfer fees in [from, to) (transfers move the rest).")


class LiabilitiesOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    as_of: str
    from_: str = Field(alias="from")
    to: str
    assets: list[AssetLiabilities]


@router.get(
    "/liabilities",
    response_model=None,
    responses={200: {"model": LiabilitiesOut}, **error_responses(401, 403, 422, 429, 503)},
    summary="Outstanding credits by origin, and the period's flows, per asset (scope `report` or `admin`)",
    description=(
        "Read from the credit lots' movements, each stamped with its transaction's time. For every"
        " asset and period: outstanding(to) = outstanding(from) + issued_purchased + issued_granted"
        " - spent + refunded - expired - clawed_back - transfer_fees, to the unit. Expiries count"
        " once posted (`wallet expire`, or the periodic task of `wallet serve`)."
    ),
)
async def liabilities(
    request: Request,
    pool: ReadPool,
    caller: Annotated[Caller, requires(Scope.REPORT)],
    as_of: Instant | None = Query(default=None, description="Outstanding as of this instant. Default now."),
    from_: Instant | None = Query(
        default=None,
        alias="from",
        description="Start of the period. Default: the start of as_of's UTC month.",
    ),
    to: Instant | None = Query(default=None, description="End of the period, exclusive. Default as_of."),
) -> Response:
    period = ReportPeriod.resolve(as_of, from_, to)
    response = DocumentResponse(await liability_report(pool, period))
    if resources_of(request).read_pool is not None:  # read from WALLET_READ_DATABASE_URL
        response.headers[READ_LAG_HEADER] = str(await replica_lag_s(pool))
    return response
