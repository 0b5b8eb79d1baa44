"""Credit lots: the per-asset policies, the expiry of due lots into breakage, and the liability
report. The lots themselves are kept by the database (db/sql/functions/60_lots.sql): every
posting fills or draws them in the statement that writes its ledger entries.

Expiry runs in small database transactions (`lot_expiry_accounts_per_transaction` accounts
each, locked with SKIP LOCKED), so it never holds many users' row locks at once and two runs,
or a run and a spend, never expire one lot twice.

The liability report sums lot movements per asset, origin and type over a window of time: from
the per-day totals of wallet.services.rollup for the days its window covers whole, movement by
movement for the days it cuts and for what is not rolled up yet.
"""

from __future__ import annotations

import asyncio
import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import structlog
from prometheus_client import Counter

from wallet.domain.times import api_time, check_period
from wallet.settings import Settings

log = structlog.get_logger("wallet.lots")

LOTS_EXPIRED_MINOR = Counter(
    "wallet_lots_expired_minor_total",
    "Minor units moved to breakage by this process's expiry runs (all assets together)",
)

SYNC_POLICIES_SQL = """
WITH wanted AS (
    SELECT p.asset_code, p.spend_order, p.purchased_expires_in_seconds, p.granted_expires_in_seconds
      FROM jsonb_to_recordset($1::jsonb) AS p(asset_code text, spend_order text,
                                               purchased_expires_in_seconds integer,
                                               granted_expires_in_seconds integer)
), gone AS (
    DELETE FROM asset_lot_policies WHERE asset_code NOT IN (SELECT asset_code FROM wanted)
)
INSERT INTO asset_lot_policies AS a (asset_code, spend_order, purchased_expires_in_seconds,
                                     granted_expires_in_seconds)
SELECT * FROM wanted
ON CONFLICT (asset_code) DO UPDATE
   SET spend_order = EXCLUDED.spend_order,
       purchased_expires_in_seconds = EXCLUDED.purchased_expires_in_seconds,
       granted_expires_in_seconds = EXCLUDED.granted_expires_in_seconds,
       updated_at = now()
 WHERE (a.spend_order, a.purchased_expires_in_seconds, a.granted_expires_in_seconds)
       IS DISTINCT FROM (EXCLUDED.spend_order, EXCLUDED.purchased_expires_in_seconds,
                         EXCLUDED.granted_expires_in_seconds)
"""


async def sync_policies(db: asyncpg.Pool | asyncpg.Connection, settings: Settings) -> None:
    """Makes the database's policies those of the settings (the posting functions read them)."""
    rows = [
        {"asset_code": code, **policy.model_dump(mode="json")}
        for code, policy in settings.lot_policies.items()
    ]
    await db.execute(SYNC_POLICIES_SQL, orjson.dumps(rows).decode())


@dataclass(frozen=True, slots=True)
class ExpiryRun:
    accounts: int
    expired_minor: int


async def expire_due(pool: asyncpg.Pool, settings: Settings, max_accounts: int | None = None) -> ExpiryRun:
    """Expires due lots until none is left or `max_accounts` accounts were visited."""
    budget = max_accounts or settings.lot_expiry_max_accounts_per_run
    accounts = expired = 0
    while accounts < budget:
        step = min(settings.lot_expiry_accounts_per_transaction, budget - accounts)
        row = await pool.fetchrow(
            "SELECT accounts_swept, expired_minor FROM wallet_sweep_expired_lots($1)", step
        )
        assert row is not None
        accounts += row["accounts_swept"]
        expired += row["expired_minor"]
        if row["accounts_swept"] < step:
            break
    if expired:
        LOTS_EXPIRED_MINOR.inc(expired)
    return ExpiryRun(accounts, expired)


async def run_lot_expirer(pool: asyncpg.Pool, settings: Settings) -> None:
    """Background task of each worker: expire due lots every `lot_expiry_interval_ms`."""
    interval_s = settings.lot_expiry_interval_ms / 1000
    while True:
        await asyncio.sleep(interval_s)
        try:
            run = await expire_due(pool, settings)
            if run.expired_minor:
                log.info("lots_expired", accounts=run.accounts, expired_minor=run.expired_minor)
        except Exception as exc:  # a run that fails is retried by the next one
            log.warning("lot_expiry_failed", error=type(exc).__name__)


# The report's figures per asset, in the order of the CSV columns.
REPORT_FIELDS = (
    "asset_type",
    "outstanding_purchased",
    "outstanding_granted",
    "issued_purchased",
    "issued_granted",
    "spent",
    "refunded",
    "expired",
    "clawed_back",
    "transfer_fees",
)


@dataclass(frozen=True, slots=True)
class ReportPeriod:
    as_of: datetime
    from_time: datetime
    to_time: datetime

    @classmethod
    def resolve(
        cls, as_of: datetime | None, from_time: datetime | None, to_time: datetime | None
    ) -> ReportPeriod:
        """Defaults: as_of now; the period from the start of as_of's month (UTC) to as_of. The
        times given carry a zone (the route takes only those; the command reads UTC)."""
        assert all(t is None or t.tzinfo is not None for t in (as_of, from_time, to_time))
        as_of = as_of or datetime.now(UTC)
        to_time = to_time or as_of
        from_time = from_time or to_time.astimezone(UTC).replace(
            day=1, hour=0, minute=0, second=0, microsecond=0
        )
        check_period(from_time, to_time)
        return cls(as_of, from_time, to_time)


async def liability_report(pool: asyncpg.Pool, period: ReportPeriod) -> dict[str, Any]:
    """The report as a document: the period, then one object per asset (REPORT_FIELDS)."""
    rows = await pool.fetch(
        "SELECT * FROM wallet_liability_report($1, $2, $3)", period.as_of, period.from_time, period.to_time
    )
    return {
        "as_of": api_time(period.as_of),
        "from": api_time(period.from_time),
        "to": api_time(period.to_time),
        "assets": [{name: row[name] for name in REPORT_FIELDS} for row in rows],
    }


def report_csv(report: dict[str, Any]) -> str:
    """One row per asset, the period in three leading columns."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["as_of", "from", "to", *REPORT_FIELDS])
    for asset in report["assets"]:
        writer.writerow([report["as_of"], report["from"], report["to"], *(asset[f] for f in REPORT_FIELDS)])
    return out.getvalue()
