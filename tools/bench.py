"""`make bench` (`python -m tools.bench`): the service over HTTP against the raw PostgreSQL limit, measured in one run.

It creates a fresh database on the given PostgreSQL server, starts `wallet serve` on it, and
drives it with wrk (a separate C process, so the load generator is not the bottleneck) at each
concurrency. Every wrk connection has its own thread and its own user, so "64 clients" means 64
users writing at once. In the same run it measures `pgbench -N -M prepared` (and `-S` for reads)
on the same server, and prints each figure with its ratio to pgbench at the same concurrency.

Requires `wrk` and `pgbench` on PATH (Debian: `apt-get install wrk postgresql-client`).

`--compare-lots N` measures what the credit-lots trigger (migration 0009) costs on a noisy
machine: one database and one service, the trigger switched on and off between N pairs of short
runs in ABBA order, so preparation, growth and order effects cancel out; spends draw a purchased
lot each, top-ups fill one. (With the trigger off the lots fall behind the balances; the scratch
database is not meant to verify afterwards.) The hash chain has no such switch since migration
0015: the posting core writes each link with its entry, and the database refuses an entry on a
user account without one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import httpx
import typer

from tools.scratch_db import recreate_database, with_database
from tools.service_process import ServiceProcess, free_port

BENCH_DATABASE = "wallet_bench"
PGBENCH_SUFFIX = "_pgbench"
# Interpolated into SQL and command lines, so a plain identifier, short enough for the suffix.
DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,54}")
PGBENCH_SCALE = 16
OPENING_BALANCE_MINOR = 10**12
PREPARE_CHUNK_USERS = 500
LOTS_TRIGGER = "ledger_entries_lots"

LUA_COMMON = r"""
local next_thread_id = 0
function setup(thread)
  thread:set("tid", next_thread_id)
  next_thread_id = next_thread_id + 1
end

function init(args)
  run_id = args[1]
  key = args[2]
  users = tonumber(args[3])
  batch_size = tonumber(args[4])
  user = string.format("bench_%04d", tid % users)
  counter = 0
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"socket_errors":%d,"non_2xx":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""

LUA_SINGLE_WRITE = r"""
function request()
  counter = counter + 1
  return wrk.format("POST", "/api/v1/transactions/KIND",
    {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json",
     ["Idempotency-Key"] = run_id .. "-" .. tid .. "-" .. counter},
    '{"user_id":"' .. user .. '","asset_type":"GOLD_COINS","amount":1}')
end
"""

LUA_REQUEST = {
    # The framework's floor: a hello-world FastAPI route (tools/hello_app.py) served by the same
    # uvicorn with the same worker count, measured in the same run (see HelloProcess).
    "hello": r"""
function request()
  return wrk.format("GET", "/hello")
end
""",
    "topup": LUA_SINGLE_WRITE.replace("KIND", "topup"),
    "spend": LUA_SINGLE_WRITE.replace("KIND", "spend"),
    "balance": r"""
function request()
  return wrk.format("GET", "/api/v1/wallets/" .. user .. "/balance",
    {["Authorization"] = "Bearer " .. key})
end
""",
    # The first page of the user's history (20 transactions, newest first).
    "history": r"""
function request()
  return wrk.format("GET", "/api/v1/wallets/" .. user .. "/transactions?limit=20",
    {["Authorization"] = "Bearer " .. key})
end
""",
    # A batch of transfers: each operation moves 1 coin into or out of one of the thread's users.
    "batch": r"""
function request()
  counter = counter + 1
  local ops = {}
  for i = 1, batch_size do
    local target = string.format("bench_%04d", (tid * batch_size + i) % users)
    local kind = (i % 2 == 0) and "spend" or "topup"
    ops[i] = '{"type":"' .. kind .. '","user_id":"' .. target .. '","asset_type":"DIAMONDS","amount":1}'
  end
  return wrk.format("POST", "/api/v1/transactions/batch",
    {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json",
     ["Idempotency-Key"] = run_id .. "-" .. tid .. "-" .. counter},
    '{"operations":[' .. table.concat(ops, ",") .. ']}')
end
""",
}


@dataclass
class Measurement:
    scenario: str
    clients: int
    requests: int
    per_second: float  # requests/s, or transfers/s for batches
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SystemExit(f"`{tool}` is not on PATH; install it (Debian: apt-get install {tool})")
    return path


def _psql_env(url: str) -> dict[str, str]:
    """pgbench takes libpq settings from the environment."""
    parts = urlsplit(url)
    env = dict(os.environ)
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    env["PGHOST"] = query.get("host") or parts.hostname or "127.0.0.1"
    env["PGPORT"] = str(parts.port or 5432)
    env["PGUSER"] = parts.username or "postgres"
    if parts.password:
        env["PGPASSWORD"] = parts.password
    return env


async def _prepare_database(admin_url: str, database: str, users: int) -> tuple[str, str]:
    """A fresh, migrated database with `users` funded users; returns (url, api key)."""
    from wallet.db.migrate import upgrade_to_head_async

    await recreate_database(admin_url, database)
    url = with_database(admin_url, database)
    await upgrade_to_head_async(url)
    return url, await prepare_ledger(url, users)


async def prepare_ledger(url: str, users: int) -> str:
    """In a migrated database: the reference data, an admin key named `bench` (returned), `users`
    users bench_0000... with large opening balances in GOLD_COINS and DIAMONDS, VACUUM ANALYZE,
    and the openings audited."""
    import asyncpg

    from wallet.services.api_keys import create_api_key
    from wallet.services.audit import run_audit
    from wallet.services.seed import seed_reference_data
    from wallet.settings import Settings

    conn = await asyncpg.connect(url)
    try:
        await seed_reference_data(conn)
        token = await create_api_key(conn, "bench", ["admin"])
        api_key_id = await conn.fetchval("SELECT id FROM api_keys WHERE name = 'bench'")
        # Set-based, one statement each: users with their accounts, then opening balances posted
        # straight through the posting function (above the HTTP amount limit on purpose, so
        # spends never run dry during a run).
        await conn.execute(
            "SELECT wallet_ensure_user(format('bench_%s', lpad(i::text, 4, '0')), 'Bench')"
            " FROM generate_series(0, $1 - 1) AS i",
            users,
        )
        # In chunks: each posting holds an advisory lock until its transaction commits, and the
        # shared lock table holds a few thousand.
        for first in range(0, users, PREPARE_CHUNK_USERS):
            await conn.execute(
                "SELECT wallet_post_transaction($1, format('open-%s-%s', i, a), 'bonus',"
                "       format('bench_%s', lpad(i::text, 4, '0')), a, $2, 'bench opening', '{}')"
                " FROM generate_series($3::int, $4::int) AS i, unnest(ARRAY['GOLD_COINS', 'DIAMONDS']) AS a",
                api_key_id,
                OPENING_BALANCE_MINOR,
                first,
                min(first + PREPARE_CHUNK_USERS, users) - 1,
            )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    # The live audit checks what was posted since its last clean run: the opening postings are
    # audited now, so the service's periodic audit covers what the benchmark writes, as in steady
    # operation, not a backlog of the preparation (a 13 s run that fell into the 64-client runs).
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
    try:
        audit = await run_audit(pool, Settings(database_url=url, audit_settle_ms=0))
    finally:
        await pool.close()
    assert audit.consistent, audit.problems
    return token


async def _measure_bytes_per_write(url: str, writes: int) -> dict[str, object]:
    """What one single write (a top-up or a spend, alternately, each its own database transaction
    through wallet_post_transaction, as the service's lone writes are) adds to the database:
    stored bytes per write, all tables with their indexes and TOAST, after VACUUM before and
    after (nothing pruned), per table too; and WAL per write, counted by this backend alone
    (EXPLAIN (ANALYZE, WAL) of each call, so other databases of a shared server do not count;
    the commit record, some 40 bytes, is not in it), with the number of full-page images in it."""
    import asyncpg

    sizes_sql = (
        "SELECT c.relname, pg_total_relation_size(c.oid) AS bytes FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
    )
    conn = await asyncpg.connect(url)
    try:
        api_key_id = await conn.fetchval("SELECT id FROM api_keys WHERE name = 'bench'")
        await conn.execute("VACUUM")
        before = {r["relname"]: r["bytes"] for r in await conn.fetch(sizes_sql)}
        wal = 0
        full_pages = 0
        run = uuid.uuid4().hex[:8]
        for i in range(writes):
            plan = await conn.fetchval(
                "EXPLAIN (ANALYZE, WAL, FORMAT JSON) SELECT * FROM wallet_post_transaction("
                "$1, $2, $3, format('bench_%s', lpad($4::int::text, 4, '0')), 'GOLD_COINS', 1, NULL, '{}')",
                api_key_id,
                f"bytes-{run}-{i}",
                "topup" if i % 2 == 0 else "spend",
                i % 100,
            )
            wal += int(json.loads(plan)[0]["Plan"].get("WAL Bytes", 0))
            full_pages += int(json.loads(plan)[0]["Plan"].get("WAL FPI", 0))
        await conn.execute("VACUUM")
        after = {r["relname"]: r["bytes"] for r in await conn.fetch(sizes_sql)}
    finally:
        await conn.close()
    tables = {
        name: round((after[name] - before.get(name, 0)) / writes)
        for name in sorted(after)
        if after[name] != before.get(name, 0)
    }
    return {
        "writes": writes,
        "stored_bytes_per_write": round(sum(after.values()) - sum(before.values())) / writes,
        "wal_bytes_per_write": wal / writes,
        # Full-page images: the first change of a page after a checkpoint (anyone's, on a shared
        # server) logs the whole page; they are in the WAL bytes above.
        "wal_full_page_images": full_pages,
        "stored_bytes_per_table": tables,
    }


class HelloProcess:
    """tools/hello_app.py under the supervisor `wallet serve` runs the service with
    (`wallet.serving`: uvicorn, N workers, one listening socket per worker)."""

    def __init__(self, workers: int) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wallet.serving", "tools.hello_app:app", "--port", str(self.port),
             "--workers", str(self.workers)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base_url}/hello", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the hello-world app did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)


def _run_wrk(
    service: ServiceProcess | HelloProcess,
    scenario: str,
    clients: int,
    seconds: int,
    token: str,
    users: int,
    batch_size: int,
    workdir: Path,
) -> Measurement:
    script = workdir / f"{scenario}.lua"
    script.write_text(LUA_COMMON + LUA_REQUEST[scenario])
    run_id = uuid.uuid4().hex[:10]
    result = subprocess.run(
        [
            _require("wrk"),
            "-t",
            str(clients),
            "-c",
            str(clients),
            "-d",
            f"{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            service.base_url,
            "--",
            run_id,
            token,
            str(users),
            str(batch_size),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    per_request = batch_size if scenario == "batch" else 1
    return Measurement(
        scenario=scenario,
        clients=clients,
        requests=stats["requests"],
        per_second=stats["requests"] * per_request / (stats["duration_us"] / 1e6),
        p50_ms=stats["p50_us"] / 1000,
        p95_ms=stats["p95_us"] / 1000,
        p99_ms=stats["p99_us"] / 1000,
        errors=stats["socket_errors"] + stats["non_2xx"],
    )


def _pgbench(admin_url: str, database: str, mode: str, clients: int, seconds: int) -> float:
    env = _psql_env(admin_url)
    result = subprocess.run(
        [
            _require("pgbench"),
            mode,
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            str(min(clients, 2)),
            "-T",
            str(seconds),
            database,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    match = re.search(r"tps = ([0-9.]+)", result.stdout)
    assert match, result.stdout
    return float(match.group(1))


def _init_pgbench(admin_url: str, database: str) -> None:
    env = _psql_env(admin_url)
    subprocess.run(["dropdb", "--if-exists", database], env=env, check=False, capture_output=True)
    subprocess.run(["createdb", database], env=env, check=True, capture_output=True)
    subprocess.run(
        [_require("pgbench"), "-i", "-q", "-s", str(PGBENCH_SCALE), database],
        env=env,
        check=True,
        capture_output=True,
    )


def run_bench(
    admin_url: str,
    *,
    clients: list[int],
    seconds: int,
    workers: int,
    batch_size: int,
    scenarios: list[str],
    output: Path | None,
    database: str = BENCH_DATABASE,
    byte_writes: int = 0,
) -> dict[str, object]:
    import asyncio

    if not DATABASE_NAME.fullmatch(database):
        raise ValueError(f"not a plain database name: {database!r}")
    pgbench_database = database + PGBENCH_SUFFIX
    users = max(clients) * max(batch_size, 1)
    print(f"preparing {database} with {users} users ...", file=sys.stderr, flush=True)
    url, token = asyncio.run(_prepare_database(admin_url, database, users))
    per_write: dict[str, object] | None = None
    if byte_writes:
        per_write = asyncio.run(_measure_bytes_per_write(url, byte_writes))
        print(
            f"  per single write ({byte_writes} writes): stored {per_write['stored_bytes_per_write']:.0f} bytes"
            f" (all tables, after VACUUM, before pruning), WAL {per_write['wal_bytes_per_write']:.0f} bytes"
            f" ({per_write['wal_full_page_images']} full-page images in all);"
            f" by table {per_write['stored_bytes_per_table']}",
            file=sys.stderr,
            flush=True,
        )
    _init_pgbench(admin_url, pgbench_database)
    measurements: list[Measurement] = []
    pgbench: dict[str, dict[int, float]] = {"-N": {}, "-S": {}}
    service = ServiceProcess({"WALLET_DATABASE_URL": url, "WALLET_LOG_LEVEL": "WARNING"}, workers=workers)
    service.start()
    hello = HelloProcess(workers) if "hello" in scenarios else None
    if hello is not None:
        hello.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for concurrency in clients:
                for mode in ("-N", "-S"):
                    pgbench[mode][concurrency] = _pgbench(
                        admin_url, pgbench_database, mode, concurrency, seconds
                    )
                for scenario in scenarios:
                    target = hello if scenario == "hello" and hello is not None else service
                    # Warm-up, not measured: each of the service's connections plans the posting
                    # functions' statements on first use (tens of ms each), which landed in
                    # whichever scenario came first (its p99 300-400 ms).
                    _run_wrk(target, scenario, concurrency, 1, token, users, batch_size, Path(tmp))
                    measurement = _run_wrk(
                        target, scenario, concurrency, seconds, token, users, batch_size, Path(tmp)
                    )
                    measurements.append(measurement)
                    print(
                        f"  {scenario:<8} c={concurrency:<3} {measurement.per_second:>9.0f}/s "
                        f"p99 {measurement.p99_ms:.1f} ms  errors {measurement.errors}",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        service.stop()
        if hello is not None:
            hello.stop()
    report = {
        "workers": workers,
        "seconds": seconds,
        "batch_size": batch_size,
        "pgbench_tps": {mode: {str(c): tps for c, tps in by.items()} for mode, by in pgbench.items()},
        "measurements": [asdict(m) for m in measurements],
        "per_write": per_write,
    }
    print(render(measurements, pgbench))
    if output:
        output.write_text(json.dumps(report, indent=2) + "\n")
    return report


@dataclass
class TriggerComparison:
    scenario: str
    clients: int
    with_trigger: list[float]  # per second, one per run, in the order run
    without_trigger: list[float]

    @property
    def median_with(self) -> float:
        return statistics.median(self.with_trigger)

    @property
    def median_without(self) -> float:
        return statistics.median(self.without_trigger)

    @property
    def median_pair_ratio(self) -> float:
        """Runs n with and n without were back to back: the median of their ratios."""
        return statistics.median(a / b for a, b in zip(self.with_trigger, self.without_trigger, strict=True))


async def _set_trigger(url: str, trigger: str, enabled: bool) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        action = "ENABLE" if enabled else "DISABLE"
        await conn.execute(f"ALTER TABLE ledger_entries {action} TRIGGER {trigger}")
    finally:
        await conn.close()


def run_trigger_comparison(
    admin_url: str,
    *,
    clients: list[int],
    seconds: int,
    workers: int,
    batch_size: int,
    scenarios: list[str],
    rounds: int,
    output: Path | None,
    database: str,
    trigger: str,
) -> dict[str, object]:
    """Each scenario at each concurrency `rounds` times with the trigger on ledger_entries and
    `rounds` times without, alternating in ABBA order on one database and one running service."""
    import asyncio

    if not DATABASE_NAME.fullmatch(database):
        raise ValueError(f"not a plain database name: {database!r}")
    users = max(clients) * max(batch_size, 1)
    print(f"preparing {database} with {users} users ...", file=sys.stderr, flush=True)
    url, token = asyncio.run(_prepare_database(admin_url, database, users))
    results: list[TriggerComparison] = []
    service = ServiceProcess({"WALLET_DATABASE_URL": url, "WALLET_LOG_LEVEL": "WARNING"}, workers=workers)
    service.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for concurrency in clients:
                for scenario in scenarios:
                    # Warm-up: every connection of the service has planned its statements.
                    _run_wrk(service, scenario, concurrency, 1, token, users, batch_size, Path(tmp))
                    runs: dict[bool, list[float]] = {True: [], False: []}
                    for n in range(rounds):
                        for enabled in (True, False) if n % 2 == 0 else (False, True):
                            asyncio.run(_set_trigger(url, trigger, enabled))
                            measurement = _run_wrk(
                                service, scenario, concurrency, seconds, token, users, batch_size, Path(tmp)
                            )
                            if measurement.errors:
                                raise SystemExit(f"{scenario} c={concurrency}: {measurement.errors} errors")
                            runs[enabled].append(measurement.per_second)
                    result = TriggerComparison(scenario, concurrency, runs[True], runs[False])
                    results.append(result)
                    print(
                        f"  {scenario:<8} c={concurrency:<3} with {result.median_with:>9.0f}/s  "
                        f"without {result.median_without:>9.0f}/s  ratio {result.median_pair_ratio:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        service.stop()
        asyncio.run(_set_trigger(url, trigger, True))
    report: dict[str, object] = {
        "trigger": trigger,
        "workers": workers,
        "seconds": seconds,
        "batch_size": batch_size,
        "rounds": rounds,
        "comparisons": [asdict(r) | {"median_pair_ratio": r.median_pair_ratio} for r in results],
    }
    print(render_trigger_comparison(trigger, results))
    if output:
        output.write_text(json.dumps(report, indent=2) + "\n")
    return report


def render_trigger_comparison(trigger: str, results: list[TriggerComparison]) -> str:
    lines = [
        f"| scenario | clients | with {trigger} (median) | without (median) | with / without (median of pairs) | pairs |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.scenario} | {r.clients} | {r.median_with:,.0f} | {r.median_without:,.0f} | "
            f"{r.median_pair_ratio:.2f} | {len(r.with_trigger)} |"
        )
    return "\n".join(lines)


def render(measurements: list[Measurement], pgbench: dict[str, dict[int, float]]) -> str:
    lines = [
        "| scenario | clients | per second | p50 ms | p95 ms | p99 ms | errors | pgbench tps (same c) | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in measurements:
        mode = "-S" if m.scenario in ("balance", "history", "hello") else "-N"
        baseline = pgbench[mode][m.clients]
        lines.append(
            f"| {m.scenario} | {m.clients} | {m.per_second:,.0f} | {m.p50_ms:.1f} | {m.p95_ms:.1f} | "
            f"{m.p99_ms:.1f} | {m.errors} | {mode} {baseline:,.0f} | {m.per_second / baseline:.2f} |"
        )
    by_key = {(m.scenario, m.clients): m.per_second for m in measurements}
    for (scenario, clients), per_second in by_key.items():
        floor = by_key.get(("hello", clients))
        if scenario == "balance" and floor:
            lines.append(
                f"\nbalance c={clients}: {per_second:,.0f}/s = {per_second / floor:.2f} x hello-world FastAPI "
                f"({floor:,.0f}/s, same uvicorn, same workers, same run)"
            )
    for scenario in ("topup", "spend"):
        one, many = by_key.get((scenario, 1)), by_key.get((scenario, max(c for _, c in by_key)))
        if one and many:
            lines.append(
                f"\n{scenario}: {max(c for _, c in by_key)} clients on distinct users = "
                f"{many / one:.1f} x one client"
            )
    return "\n".join(lines)


app = typer.Typer(add_completion=False)


def _err(message: str) -> None:
    typer.echo(message, err=True)


@app.command()
def main(
    database_url: Annotated[
        str,
        typer.Option(
            envvar="WALLET_BENCH_DATABASE_URL",
            help="A PostgreSQL server to benchmark on (a scratch database is created there).",
        ),
    ] = "postgresql://postgres@127.0.0.1:5432/postgres",
    clients: Annotated[str, typer.Option(help="Comma-separated concurrency levels.")] = "1,16,64",
    seconds: Annotated[int, typer.Option(min=1, max=600, help="Duration of each measurement.")] = 10,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Service worker processes.")] = 2,
    batch_size: Annotated[int, typer.Option(min=1, max=1000, help="Operations per batch request.")] = 100,
    scenarios: Annotated[
        str,
        typer.Option(help="Any of hello,topup,spend,balance,history,batch (hello: the framework's floor)."),
    ] = "hello,topup,spend,balance,batch",
    output: Annotated[Path | None, typer.Option(help="Also write the figures as JSON here.")] = None,
    scratch_database: Annotated[
        str | None,
        typer.Option(
            help="The scratch database to (re)create on the server; pgbench gets NAME_pgbench beside it."
            f" Default: {BENCH_DATABASE}."
        ),
    ] = None,
    compare_lots: Annotated[
        int,
        typer.Option(
            min=0,
            max=100,
            help="Instead of the usual report: N pairs of runs of each scenario with and without the credit-lots"
            " trigger, alternating on one database and one service, and their ratio. No pgbench."
            " Needs an explicit --scratch-database.",
        ),
    ] = 0,
    byte_writes: Annotated[
        int,
        typer.Option(
            min=0,
            max=100000,
            help="Before the runs: stored bytes and WAL per single write, measured over this many writes (0: not).",
        ),
    ] = 1000,
) -> None:
    """Throughput and latency over HTTP at each concurrency, beside pgbench on the same server."""
    chosen = [s.strip() for s in scenarios.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(LUA_REQUEST))
    if unknown:
        _err(f"unknown scenarios: {', '.join(unknown)}")
        raise typer.Exit(code=2)
    if compare_lots and scratch_database is None:
        _err("--compare-lots needs an explicit --scratch-database")
        raise typer.Exit(code=2)
    scratch_database = scratch_database or BENCH_DATABASE
    if not DATABASE_NAME.fullmatch(scratch_database):
        _err(f"--scratch-database must match {DATABASE_NAME.pattern}: {scratch_database!r}")
        raise typer.Exit(code=2)
    if compare_lots:
        run_trigger_comparison(
            database_url,
            clients=[int(c) for c in clients.split(",")],
            seconds=seconds,
            workers=workers,
            batch_size=batch_size,
            scenarios=chosen,
            rounds=compare_lots,
            output=output,
            database=scratch_database,
            trigger=LOTS_TRIGGER,
        )
        return
    run_bench(
        database_url,
        clients=[int(c) for c in clients.split(",")],
        seconds=seconds,
        workers=workers,
        batch_size=batch_size,
        scenarios=chosen,
        output=output,
        database=scratch_database,
        byte_writes=byte_writes,
    )


if __name__ == "__main__":
    app()
