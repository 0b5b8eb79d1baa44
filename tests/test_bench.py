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
from pathlib import Path

import asyncpg
import pytest


async def _drop(server_url: str, *names: str) -> None:
    admin = await asyncpg.connect(server_url)
    try:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.mark.skipif(
    not (shutil.which("wrk") and shutil.which("pgbench")), reason="wrk and pgbench not installed"
)
def test_bench_reports_every_scenario_beside_pgbench(server_url, tmp_path: Path):
    if "host=" in server_url:
        pytest.skip("the benchmark needs a TCP PostgreSQL server (WALLET_TEST_DATABASE_URL)")
    output = tmp_path / "bench.json"
    scratch = f"wallet_test_bench_{uuid.uuid4().hex[:12]}"
    try:
        result = _run_bench(server_url, scratch, output)
    finally:
        asyncio.run(_drop(server_url, scratch, scratch + "_pgbench"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    measured = {(m["scenario"], m["clients"]) for m in report["measurements"]}
    assert measured == {(s, c) for s in ("topup", "spend", "balance", "batch") for c in (1, 2)}
    assert all(m["errors"] == 0 and m["requests"] > 0 for m in report["measurements"])
    assert all(tps > 0 for by_clients in report["pgbench_tps"].values() for tps in by_clients.values())
    assert "| topup | 1 |" in result.stdout


def _run_bench(server_url: str, scratch: str, output: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.bench",
            "--database-url",
            server_url,
            "--clients",
            "1,2",
            "--seconds",
            "1",
            "--batch-size",
            "5",
            "--output",
            str(output),
            "--scratch-database",
            scratch,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ,
    )
