"""Schemathesis against the service's own OpenAPI document, over real HTTP, every phase:
no request may get a 5xx, and every response must match the documented status, content type,
headers and schema."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tools.service_process import ServiceProcess

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    ]
)


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_violation(database_url, keys, tmp_path: Path):
    service = ServiceProcess({"WALLET_DATABASE_URL": database_url, "WALLET_LOG_LEVEL": "WARNING"})
    service.start()
    try:
        schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
        result = subprocess.run(
            [
                schemathesis,
                "run",
                f"{service.base_url}/openapi.json",
                "-H",
                f"Authorization: Bearer {keys['admin']}",
                "--phases",
                "examples,coverage,fuzzing,stateful",
                "--checks",
                CHECKS,
                "--max-examples",
                "20",
                "--seed",
                "20261126",
                "--continue-on-failure",
                "--report-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=os.environ | {"NO_COLOR": "1"},
        )
    finally:
        service.stop()
    summary = result.stdout[-4000:]
    assert result.returncode == 0, summary
    generated = re.search(r"(\d+) generated", summary)
    assert generated and int(generated.group(1)) > 200, summary
