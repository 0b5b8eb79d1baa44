"""The README's first command: `wallet serve` with no database configured starts the embedded
PostgreSQL, migrates, seeds the demo and prints a working key."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from tools.service_process import ServiceProcess


def test_serve_without_database_url_runs_the_embedded_demo(tmp_path: Path, monkeypatch):
    for name in [n for n in os.environ if n.startswith("WALLET_")]:
        monkeypatch.delenv(name)
    tmp_path.chmod(0o755)
    data_dir = tmp_path / "data"
    log = tmp_path / "serve.log"
    service = ServiceProcess({"WALLET_DATA_DIR": str(data_dir)}, log_path=log)
    service.start()
    try:
        key = (data_dir / "demo-api-key").read_text().strip()
        response = httpx.get(
            f"{service.base_url}/api/v1/wallets/user_001/balance",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert response.status_code == 200
        by_asset = {b["asset_type"]: b for b in response.json()["balances"]}
        assert by_asset["GOLD_COINS"]["balance"] == 1000
        # The demo's loyalty points were granted with the default policy's expiry (365 days).
        points = by_asset["LOYALTY_POINTS"]
        assert (points["granted"], points["next_expiry"]["amount"]) == (200, 200)
        expires = datetime.fromisoformat(points["next_expiry"]["at"])
        assert timedelta(days=364) < expires - datetime.now(UTC) < timedelta(days=366)
        assert (data_dir / "pgdata" / "PG_VERSION").exists()
    finally:
        service.stop()
    output = log.read_text()
    assert key in output
    assert f"{service.base_url}/docs" in output
    # The embedded server stopped with the service.
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()


def test_without_database_url_or_embedded_server_one_line_names_the_variable(tmp_path: Path):
    """In the image (no `embedded` extra) a deployment that forgot WALLET_DATABASE_URL stops with
    one line naming it, not a traceback (it was `PermissionError: '/app/.wallet-data'`)."""
    env = {n: v for n, v in os.environ.items() if not n.startswith("WALLET_")}
    without_pgserver = "import sys; sys.modules['pgserver'] = None; from wallet.cli import app; app()"
    for command in (["migrate"], ["serve"], ["seed"]):
        result = subprocess.run(
            [sys.executable, "-c", without_pgserver, *command],
            env=env | {"WALLET_DATA_DIR": str(tmp_path / "data")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1, result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert "WALLET_DATABASE_URL is not set" in result.stderr
