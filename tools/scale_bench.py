"""`make scale-bench` (`python -m tools.scale_bench`): what the service costs as the ledger grows, in one run.

Two scratch databases on one server, prepared alike (tools.bench: users with opening balances,
VACUUM ANALYZE, the openings audited): NAME_empty stays as it is; NAME_loaded is copied from it
and then gets N transactions through the posting core (tools.scale_load: chunks of postings in
one `wallet_post` call each, on two connections), and is NOT analysed afterwards: its planner
statistics are those of the empty ledger, as on a server whose autovacuum is off or has not run
yet. Then, against both, in the same run:

  * writes (top-ups, spends) and reads (balances, the first page of a user's history) through
    `wallet serve` over HTTP, wrk at --clients, in ABBA order (empty, loaded, loaded, empty, ...)
    so that drift on a shared machine falls on both;
  * reports: the liabilities report (default period: the month so far, every loaded
    transaction in it) and the 30-day volume, as single requests, median of 3; before anything
    else, the liabilities report's per-day totals are brought up to date (timed), as the
    service's background task keeps them on a ledger it has served;
  * `wallet verify` (the command itself, --verify-jobs connections), wall time;
  * the live audit's catch-up: the service started with its periodic audit every second, its
    chunks (audit_runs rows) timed from the first to the last that reaches the newest
    transaction; the sum of the chunks' own durations is the background work. GET
    /api/v1/audit is asked meanwhile and must answer 200, and top-ups are measured meanwhile too.

It prints one table with loaded / empty ratios and the issue's targets at 1 M transactions
(writes and reads >= 0.9 x the empty ledger, the backlog audited in <= 3 minutes of background
work, verify <= 2 minutes). The databases are dropped at the end unless --keep.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import httpx
import typer

from tools.bench import DATABASE_NAME, _prepare_database, _run_wrk
from tools.scale_load import DEFAULT_CHUNK, load_transactions
from tools.scratch_db import drop_databases, recreate_database, with_database
from tools.service_process import ServiceProcess

DEFAULT_TRANSACTIONS = 1_000_000
DEFAULT_USERS = 2_000
SCRATCH = "wallet_scale"
HOT_SCENARIOS = ("topup", "spend", "balance", "history")
TARGET_HOT_RATIO = 0.9
TARGET_AUDIT_S = 180.0
TARGET_VERIFY_S = 120.0
TARGET_AT = 1_000_000


@dataclass
class Side:
    """What was measured on one database."""

    name: str
    transactions: int = 0
    database_bytes: int = 0
    hot: dict[str, list[float]] = field(default_factory=dict)  # per scenario: per second, each run
    errors: dict[str, int] = field(default_factory=dict)
    reports_ms: dict[str, str] = field(default_factory=dict)  # median ms, or the failed statuses
    verify_s: float = 0.0
    verify_clean: bool = False
    audit_wall_s: float = 0.0
    audit_work_s: float = 0.0
    audit_chunks: int = 0
    audit_backlog: int = 0
    audit_requests: dict[str, int] = field(default_factory=dict)  # GET /api/v1/audit during catch-up
    topup_during_audit: float | None = None
    rollup_s: float = 0.0  # the liability report's per-day totals brought up to date


async def _facts(url: str) -> tuple[int, int, int]:
    """(transactions, database bytes, newest seq)."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM transactions) AS n, pg_database_size(current_database()) AS bytes,"
            " (SELECT coalesce(max(seq), 0) FROM transactions) AS newest"
        )
        assert row is not None
        return row["n"], row["bytes"], row["newest"]
    finally:
        await conn.close()


async def _roll_up(url: str) -> float:
    """Brings the liability report's per-day totals up to date, as the service's background task
    does (its chunks, without its rests, nothing left to settle): seconds."""
    from wallet.services.rollup import roll_up
    from wallet.settings import Settings

    pool = await asyncpg.create_pool(url, min_size=1, max_size=1, server_settings={"jit": "off"})
    try:
        started = time.monotonic()
        await roll_up(pool, Settings(database_url=url, audit_settle_ms=0))
        return time.monotonic() - started
    finally:
        await pool.close()


def _verify(url: str, jobs: int) -> tuple[float, bool, str]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "wallet", "verify", "--jobs", str(jobs)],
        env=dict(os.environ) | {"WALLET_DATABASE_URL": url, "WALLET_LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    return time.monotonic() - started, result.returncode == 0, result.stdout + result.stderr


def _report_ms(service: ServiceProcess, token: str, path: str, params: dict[str, Any]) -> str:
    """The median of 3 requests in ms, or the statuses when one was not answered 200 (a report
    past the statement timeout answers 503)."""
    times, statuses = [], []
    with httpx.Client(
        base_url=service.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as client:
        for _ in range(3):
            started = time.monotonic()
            response = client.get(path, params=params)
            times.append((time.monotonic() - started) * 1000)
            statuses.append(response.status_code)
    if set(statuses) != {200}:
        return f"HTTP {'/'.join(str(s) for s in statuses)} after {statistics.median(times):,.0f} ms"
    return f"{statistics.median(times):,.0f}"


async def _audit_progress(url: str, since_id: int) -> tuple[int, float, float, int]:
    """The incremental chunks recorded since `since_id`: (newest to_seq checked clean, wall
    seconds from the first chunk's start to the newest's end, seconds of the chunks' own work,
    chunks)."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT coalesce(max(to_seq) FILTER (WHERE consistent), 0) AS to_seq,"
            " coalesce(extract(epoch FROM max(finished_at) - min(started_at)), 0)::float8 AS wall,"
            " coalesce(extract(epoch FROM sum(finished_at - started_at)), 0)::float8 AS work,"
            " count(*) AS chunks, count(*) FILTER (WHERE NOT consistent) AS failed"
            " FROM audit_runs WHERE kind = 'incremental' AND id > $1",
            since_id,
        )
        assert row is not None
        if row["failed"]:
            problems = await conn.fetchval(
                "SELECT problems::text FROM audit_runs WHERE id > $1 AND NOT consistent LIMIT 1", since_id
            )
            raise RuntimeError(f"the audit found problems: {problems[:1000]}")
        return row["to_seq"], row["wall"], row["work"], row["chunks"]
    finally:
        await conn.close()


def _catch_up(
    side: Side, url: str, token: str, workers: int, clients: int, seconds: int, users: int, tmp: Path
) -> None:
    """The service started on `url` with its periodic audit every second; waits until its
    chunks have reached the newest transaction, asking GET /api/v1/audit every 5 s meanwhile and
    measuring top-ups once."""
    newest = asyncio.run(_facts(url))[2]
    since_id = asyncio.run(_last_run_id(url))
    checkpoint = asyncio.run(_checkpoint(url))
    side.audit_backlog = newest - checkpoint
    service = ServiceProcess(
        {"WALLET_DATABASE_URL": url, "WALLET_LOG_LEVEL": "WARNING", "WALLET_AUDIT_INTERVAL_MS": "1000"},
        workers=workers,
    )
    service.start()
    try:
        statuses: dict[str, int] = {}
        stop = threading.Event()

        def ask() -> None:
            with httpx.Client(
                base_url=service.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
            ) as client:
                while not stop.wait(5):
                    try:
                        code = str(client.get("/api/v1/audit").status_code)
                    except httpx.TransportError as exc:
                        code = type(exc).__name__
                    statuses[code] = statuses.get(code, 0) + 1

        asker = threading.Thread(target=ask, daemon=True)
        asker.start()
        deadline = time.monotonic() + 3600
        measured = False
        while True:
            to_seq, wall, work, chunks = asyncio.run(_audit_progress(url, since_id))
            if to_seq >= newest:
                break
            if not measured and side.audit_backlog > 0 and chunks > 0:
                measurement = _run_wrk(service, "topup", clients, seconds, token, users, 1, tmp)
                side.topup_during_audit = measurement.per_second
                measured = True
                continue
            if time.monotonic() > deadline:
                raise RuntimeError("the audit did not catch up within an hour")
            time.sleep(1)
        stop.set()
        asker.join(timeout=35)
        side.audit_wall_s, side.audit_work_s, side.audit_chunks = wall, work, chunks
        side.audit_requests = statuses
    finally:
        service.stop()


async def _last_run_id(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM audit_runs"))
    finally:
        await conn.close()


async def _checkpoint(url: str) -> int:
    from wallet.services.audit import _CHECKPOINT_SQL

    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(_CHECKPOINT_SQL))
    finally:
        await conn.close()


def _hot(
    sides: list[tuple[Side, ServiceProcess]],
    token: str,
    clients: int,
    seconds: int,
    users: int,
    rounds: int,
    tmp: Path,
) -> None:
    for scenario in HOT_SCENARIOS:
        for _, service in sides:  # warm-up, not measured: each connection plans its statements
            _run_wrk(service, scenario, clients, 1, token, users, 1, tmp)
        for n in range(rounds):
            for side, service in sides if n % 2 == 0 else list(reversed(sides)):
                measurement = _run_wrk(service, scenario, clients, seconds, token, users, 1, tmp)
                side.hot.setdefault(scenario, []).append(measurement.per_second)
                side.errors[scenario] = side.errors.get(scenario, 0) + measurement.errors
                print(
                    f"  {scenario:<8} {side.name:<6} {measurement.per_second:>8.0f}/s  errors {measurement.errors}",
                    file=sys.stderr,
                    flush=True,
                )


def _ratio(loaded: float, empty: float) -> str:
    return f"{loaded / empty:.2f}" if empty else "-"


def render(empty: Side, loaded: Side, load: dict[str, Any]) -> str:
    scale = loaded.transactions / TARGET_AT
    lines = [
        f"loaded {load['transactions']:,} transactions in {load['seconds']:.0f} s ({load['per_second']:,.0f}/s,"
        f" {load['chunk']} per chunk on {load['connections']} connections);"
        f" empty ledger {empty.transactions:,} transactions, {empty.database_bytes / 1e6:,.0f} MB;"
        f" loaded {loaded.transactions:,}, {loaded.database_bytes / 1e6:,.0f} MB",
        "",
        "| what | empty ledger | loaded ledger | loaded / empty | target at 1 M | met |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for scenario in HOT_SCENARIOS:
        e = statistics.median(empty.hot.get(scenario, [0.0]))
        loaded_value = statistics.median(loaded.hot.get(scenario, [0.0]))
        ratio = loaded_value / e if e else 0.0
        errors = empty.errors.get(scenario, 0) + loaded.errors.get(scenario, 0)
        lines.append(
            f"| {scenario} /s (median of {len(loaded.hot.get(scenario, []))}; errors {errors}) | {e:,.0f} |"
            f" {loaded_value:,.0f} | {ratio:.2f} | >= {TARGET_HOT_RATIO} x |"
            f" {'yes' if ratio >= TARGET_HOT_RATIO and not errors else 'no'} |"
        )
    if loaded.topup_during_audit is not None:
        e = statistics.median(empty.hot.get("topup", [0.0]))
        lines.append(
            f"| topup /s while the audit catches up | {e:,.0f} | {loaded.topup_during_audit:,.0f} |"
            f" {_ratio(loaded.topup_during_audit, e)} | - | - |"
        )
    for name in empty.reports_ms:
        e_ms, l_ms = empty.reports_ms[name], loaded.reports_ms[name]
        times = (
            "-"
            if "HTTP" in e_ms + l_ms
            else _ratio(float(l_ms.replace(",", "")), float(e_ms.replace(",", "")))
        )
        lines.append(f"| {name} ms (median of 3) | {e_ms} | {l_ms} | {times} | - | - |")
    lines.append(
        f"| liability report totals rolled up s | {empty.rollup_s:.1f} | {loaded.rollup_s:.1f} | - | - | - |"
    )
    lines.append(
        f"| wallet verify s | {empty.verify_s:.1f} | {loaded.verify_s:.1f} | {_ratio(loaded.verify_s, empty.verify_s)} |"
        f" <= {TARGET_VERIFY_S:.0f} s | {'yes' if loaded.verify_s <= TARGET_VERIFY_S * max(scale, 1e-9) else 'no'}"
        f"{'' if scale >= 1 else f' (pro rata: {loaded.verify_s / scale:.0f} s at 1 M)'} |"
    )
    lines.append(
        f"| audit catch-up: backlog | {empty.audit_backlog:,} | {loaded.audit_backlog:,} | - | 1 M | - |"
    )
    lines.append(
        f"| audit catch-up: background work s | {empty.audit_work_s:.1f} | {loaded.audit_work_s:.1f} | - |"
        f" <= {TARGET_AUDIT_S:.0f} s |"
        f" {'yes' if loaded.audit_work_s <= TARGET_AUDIT_S * max(scale, 1e-9) else 'no'}"
        f"{'' if scale >= 1 else f' (pro rata: {loaded.audit_work_s / scale:.0f} s at 1 M)'} |"
    )
    lines.append(
        f"| audit catch-up: wall s (chunks) | {empty.audit_wall_s:.1f} ({empty.audit_chunks}) |"
        f" {loaded.audit_wall_s:.1f} ({loaded.audit_chunks}) | - | - | - |"
    )
    statuses = ", ".join(f"{code}: {n}" for code, n in sorted(loaded.audit_requests.items())) or "none asked"
    lines.append(f"| GET /api/v1/audit during the catch-up | - | {statuses} | - | 200 | "
                 f"{'yes' if set(loaded.audit_requests) <= {'200'} else 'no'} |")  # fmt: skip
    return "\n".join(lines)


def run_scale_bench(
    admin_url: str,
    *,
    transactions: int,
    users: int,
    database: str,
    clients: int,
    seconds: int,
    rounds: int,
    workers: int,
    load_chunk: int,
    load_connections: int,
    verify_jobs: int,
    keep: bool,
    output: Path | None,
) -> dict[str, Any]:
    if not DATABASE_NAME.fullmatch(database) or len(database) > 50:
        raise ValueError(f"not a plain database name: {database!r}")
    empty_db, loaded_db = f"{database}_empty", f"{database}_loaded"
    started = time.monotonic()
    print(f"preparing {empty_db} with {users} users ...", file=sys.stderr, flush=True)
    empty_url, token = asyncio.run(_prepare_database(admin_url, empty_db, users))
    asyncio.run(recreate_database(admin_url, loaded_db, template=empty_db))
    loaded_url = with_database(admin_url, loaded_db)
    print(f"loading {transactions:,} transactions into {loaded_db} ...", file=sys.stderr, flush=True)
    result = asyncio.run(
        load_transactions(
            loaded_url, transactions, users=users, chunk=load_chunk, connections=load_connections, run="scale"
        )
    )
    load = asdict(result) | {"per_second": result.per_second, "chunk": load_chunk}
    print(f"  loaded in {result.seconds:.0f} s ({result.per_second:,.0f}/s)", file=sys.stderr, flush=True)
    empty, loaded = Side("empty"), Side("loaded")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for side, url in ((empty, empty_url), (loaded, loaded_url)):
                side.transactions, side.database_bytes, _ = asyncio.run(_facts(url))
                side.rollup_s = asyncio.run(_roll_up(url))
                print(
                    f"  report totals rolled up on {side.name}: {side.rollup_s:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
                side.verify_s, side.verify_clean, text = _verify(url, verify_jobs)
                print(f"  verify {side.name}: {side.verify_s:.1f} s", file=sys.stderr, flush=True)
                if not side.verify_clean:
                    raise RuntimeError(f"wallet verify failed on {side.name}:\n{text[-3000:]}")
                _catch_up(side, url, token, workers, clients, seconds, users, Path(tmp))
                print(
                    f"  audit {side.name}: {side.audit_backlog:,} transactions in {side.audit_wall_s:.1f} s"
                    f" ({side.audit_work_s:.1f} s of work, {side.audit_chunks} chunks); GET /audit {side.audit_requests}",
                    file=sys.stderr,
                    flush=True,
                )
            services = [
                (
                    side,
                    ServiceProcess(
                        {"WALLET_DATABASE_URL": url, "WALLET_LOG_LEVEL": "WARNING"}, workers=workers
                    ),
                )
                for side, url in ((empty, empty_url), (loaded, loaded_url))
            ]
            for _, service in services:
                service.start()
            try:
                _hot(services, token, clients, seconds, users, rounds, Path(tmp))
                for side, service in services:
                    side.reports_ms["liabilities report (month so far)"] = _report_ms(
                        service, token, "/api/v1/reports/liabilities", {}
                    )
                    side.reports_ms["volume report (30 days)"] = _report_ms(
                        service, token, "/api/v1/reports/volume", {"days": 30}
                    )
            finally:
                for _, service in services:
                    service.stop()
    finally:
        if not keep:
            asyncio.run(drop_databases(admin_url, empty_db, loaded_db))
    table = render(empty, loaded, load)
    print(table)
    print(f"\nscale bench took {time.monotonic() - started:.0f} s", file=sys.stderr)
    report = {"load": load, "empty": asdict(empty), "loaded": asdict(loaded), "users": users, "table": table}
    if output:
        output.write_text(json.dumps(report, indent=2) + "\n")
    return report


app = typer.Typer(add_completion=False)


@app.command()
def main(
    database_url: Annotated[
        str,
        typer.Option(
            envvar="WALLET_BENCH_DATABASE_URL",
            help="A PostgreSQL server (two scratch databases are created there).",
        ),
    ] = "postgresql://postgres@127.0.0.1:5432/postgres",
    transactions: Annotated[
        int, typer.Option(min=1, max=100_000_000, help="Transactions loaded into the loaded ledger.")
    ] = DEFAULT_TRANSACTIONS,
    users: Annotated[
        int, typer.Option(min=2, max=1_000_000, help="Users (each with two funded accounts).")
    ] = (DEFAULT_USERS),
    scratch_database: Annotated[
        str, typer.Option(help="Prefix of the scratch databases: NAME_empty and NAME_loaded.")
    ] = SCRATCH,
    clients: Annotated[int, typer.Option(min=1, max=256, help="wrk connections, one user each.")] = 16,
    seconds: Annotated[int, typer.Option(min=1, max=600, help="Duration of each HTTP measurement.")] = 10,
    rounds: Annotated[
        int, typer.Option(min=1, max=20, help="Measurements of each scenario per ledger (ABBA).")
    ] = 2,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Service worker processes.")] = 2,
    load_chunk: Annotated[
        int, typer.Option(min=1, max=100_000, help="Postings per wallet_post call.")
    ] = DEFAULT_CHUNK,
    load_connections: Annotated[int, typer.Option(min=1, max=16, help="Connections loading at once.")] = 2,
    verify_jobs: Annotated[int, typer.Option(min=1, max=32, help="wallet verify --jobs.")] = 3,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the scratch databases.")] = False,
    output: Annotated[Path | None, typer.Option(help="Also write the figures as JSON here.")] = None,
) -> None:
    """The same-run table: an empty ledger against one with N transactions (writes, reads,
    reports, verify, the audit's catch-up)."""
    run_scale_bench(
        database_url,
        transactions=transactions,
        users=users,
        database=scratch_database,
        clients=clients,
        seconds=seconds,
        rounds=rounds,
        workers=workers,
        load_chunk=load_chunk,
        load_connections=load_connections,
        verify_jobs=verify_jobs,
        keep=keep,
        output=output,
    )


if __name__ == "__main__":
    app()
