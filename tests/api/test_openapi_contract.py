"""Schemathesis against the service's own OpenAPI document, over real HTTP, every phase:
no request may get a 5xx, and every response must match the documented status, content type,
headers and schema."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
])


def test_schemathesis_finds_no_server_error_and_no_schema_violation(database_url, keys, tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = os.environ | {"WALLET_DATABASE_URL": database_url, "WALLET_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen([sys.executable, "-m", "wallet", "serve", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
        result = subprocess.run(
            [schemathesis, "run", f"{base}/openapi.json",
             "-H", f"Authorization: Bearer {keys['admin']}",
             "--phases", "examples,coverage,fuzzing,stateful", "--checks", CHECKS,
             "--max-examples", "20", "--seed", "20261126", "--continue-on-failure",
             "--report-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=600, env=os.environ | {"NO_COLOR": "1"})
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    summary = result.stdout[-4000:]
    assert result.returncode == 0, summary
    generated = re.search(r"(\d+) generated", summary)
    assert generated and int(generated.group(1)) > 200, summary
    print(summary[-600:])
