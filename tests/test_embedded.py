"""The README's first command: `wallet serve` with no database configured starts the embedded
PostgreSQL, migrates, seeds the demo and prints a working key."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_without_database_url_runs_the_embedded_demo(tmp_path: Path):
    tmp_path.chmod(0o755)
    data_dir = tmp_path / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLET_")}
    env |= {"WALLET_DATA_DIR": str(data_dir)}
    process = subprocess.Popen([sys.executable, "-m", "wallet", "serve", "--port", str(port)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            time.sleep(0.5)
        else:
            raise AssertionError("the embedded service did not come up")
        key = (data_dir / "demo-api-key").read_text().strip()
        response = httpx.get(f"{base}/api/v1/wallets/user_001/balance",
                             headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert response.status_code == 200
        gold = {b["asset_type"]: b["balance"] for b in response.json()["balances"]}["GOLD_COINS"]
        assert gold == 1000
        assert (data_dir / "pgdata" / "PG_VERSION").exists()
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert key in output and f"{base}/docs" in output
