"""The benchmark (`make bench`) end to end at the smallest size: it prepares its database, drives the service
with wrk, runs pgbench beside it and reports every scenario without errors. Skipped where wrk or
pgbench are not installed (they are benchmark tools, not dependencies of the service). Its scratch
databases have names of their own, so two test runs on one server do not drop each other's."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from tools.scratch_db import drop_databases


@pytest.fixture
def scratch(server_url: str) -> Iterator[str]:
    """A name for the run's scratch database (and its `_pgbench` twin), both dropped after."""
    if not (shutil.which("wrk") and shutil.which("pgbench")):
        pytest.skip("wrk and pgbench not installed")
    if "host=" in server_url:
        pytest.skip("the benchmark needs a TCP PostgreSQL server (WALLET_TEST_DATABASE_URL)")
    name = f"wallet_test_bench_{uuid.uuid4().hex[:12]}"
    yield name
    asyncio.run(drop_databases(server_url, name, name + "_pgbench"))


@pytest.mark.slow
def test_bench_reports_every_scenario_beside_pgbench(server_url, scratch, tmp_path: Path):
    output = tmp_path / "bench.json"
    result = _run_bench(server_url, scratch, output)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    measured = {(m["scenario"], m["clients"]) for m in report["measurements"]}
    assert measured == {(s, c) for s in ("hello", "topup", "spend", "balance", "batch") for c in (1, 2)}
    assert all(m["errors"] == 0 and m["requests"] > 0 for m in report["measurements"])
    assert all(tps > 0 for by_clients in report["pgbench_tps"].values() for tps in by_clients.values())
    assert "| topup | 1 |" in result.stdout
    assert report["per_write"]["writes"] == 100 and report["per_write"]["wal_bytes_per_write"] > 0
    # The balance read beside the framework's floor, measured in the same run.
    assert "x hello-world FastAPI" in result.stdout


def _run_bench(
    server_url: str, scratch: str, output: Path, *extra: str, clients: str = "1,2"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.bench",
            "--database-url",
            server_url,
            "--clients",
            clients,
            "--seconds",
            "1",
            "--batch-size",
            "5",
            "--byte-writes",  # the bytes of a single write, measured over 100 writes, not 1,000
            "100",
            "--output",
            str(output),
            "--scratch-database",
            scratch,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ,
    )


async def _row(server_url: str, database: str, sql: str) -> tuple[Any, ...]:
    """One row read from a scratch database the benchmark left."""
    conn = await asyncpg.connect(server_url, database=database)
    try:
        row = await conn.fetchrow(sql)
        assert row is not None
        return tuple(row)
    finally:
        await conn.close()


@pytest.mark.slow
def test_bench_compares_spends_with_and_without_credit_lots(server_url, scratch, tmp_path: Path):
    output = tmp_path / "bench.json"
    result = _run_bench(
        server_url, scratch, output, "--scenarios", "spend", "--compare-lots", "2", clients="1"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    drawn = asyncio.run(_spend_draws(server_url, scratch))
    report = json.loads(output.read_text())
    (comparison,) = report["comparisons"]
    assert report["trigger"] == "ledger_entries_lots"
    assert (comparison["scenario"], comparison["clients"]) == ("spend", 1)
    assert len(comparison["with_trigger"]) == len(comparison["without_trigger"]) == 2
    assert "| spend | 1 |" in result.stdout
    # Some spends drew lots (the trigger on), some did not (off), and it is on again afterwards.
    spends, spends_with_draws, enabled = drawn
    assert 0 < spends_with_draws < spends and enabled


async def _spend_draws(server_url: str, database: str) -> tuple[Any, ...]:
    return await _row(
        server_url,
        database,
        "SELECT (SELECT count(*) FROM transactions WHERE type = 'spend'),"
        " (SELECT count(DISTINCT m.transaction_id) FROM lot_movements m"
        "   JOIN transactions t ON t.id = m.transaction_id WHERE t.type = 'spend'),"
        " (SELECT tgenabled <> 'D' FROM pg_trigger WHERE tgname = 'ledger_entries_lots')",
    )


def test_bench_compare_lots_needs_an_explicit_scratch_database():
    from tools.bench import app
    from typer.testing import CliRunner

    # Refused before anything starts: in this process.
    result = CliRunner().invoke(app, ["--compare-lots", "3"])
    assert result.exit_code == 2
    assert "--compare-lots needs an explicit --scratch-database" in result.stderr


def test_bench_has_no_hash_chain_switch_any_more():
    """Since migration 0015 the posting core writes each link with its entry (no trigger to turn
    off; the database refuses a user entry without its link): the options are gone."""
    from tools.bench import app
    from typer.testing import CliRunner

    for option in (["--without-hash-chain"], ["--compare-hash-chain", "3"]):
        result = CliRunner().invoke(app, option)
        assert result.exit_code == 2
        assert "No such option" in result.stderr
