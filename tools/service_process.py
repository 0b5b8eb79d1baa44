"""`wallet serve` as a child process on a free port: what the benchmark, the bank test and
the end-to-end tests drive over real HTTP. It can be stopped gracefully or SIGKILLed, and
started again on the same port."""

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
        return int(sock.getsockname()[1])


class ServiceProcess:
    def __init__(
        self, env: dict[str, str], *, workers: int = 1, log_path: Path | None = None, port: int | None = None
    ) -> None:
        """`env` is added to this process's environment; WALLET_DATABASE_URL unset there means
        the embedded database, as for `wallet serve` itself."""
        self.env = env
        self.workers = workers
        self.log_path = log_path
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, healthy_statuses: tuple[int, ...] = (200,)) -> None:
        """Starts the service and waits until /health answers with one of `healthy_statuses`."""
        output = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wallet",
                "serve",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
            ],
            env=dict(os.environ) | self.env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"wallet serve exited with {self.process.returncode}; log: {self.log_path}"
                )
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code in healthy_statuses:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"wallet serve did not become healthy within {STARTUP_TIMEOUT_S} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind, as in a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._wait_until_port_free()

    def _wait_until_port_free(self, timeout_s: float = 30.0) -> None:
        """Workers of a killed supervisor end on their own (wallet.serving); until they have, the
        port is served and `wallet serve` refuses to start on it."""
        from wallet.serving import ensure_port_free

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ensure_port_free("127.0.0.1", self.port)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
