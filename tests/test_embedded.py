"""The README's first command: `wallet serve` with no database configured starts the embedded
PostgreSQL, migrates, seeds the demo and prints a working key."""

from __future__ import annotations

import os
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
