"""`timeout=` bounds each attempt as a whole, not each network read: against a real socket server
(a thread) that sends its answer a byte at a time, a call gives up when the attempt's time is up,
whichever part of the answer is trickling. Both clients."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from wallet_client import AsyncWalletClient, RetryPolicy, WalletClient, WalletConnectionError

BODY = b'{"status":"ok","database":"ok"}'
HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY)


@dataclass
class Trickle:
    """What the server sends at once, then what it sends a byte every `interval` seconds."""

    at_once: bytes
    trickled: bytes
    interval: float


class TrickleServer:
    """Answers every request on a real socket with `trickle`; counts the requests."""

    def __init__(self, trickle: Trickle) -> None:
        self.trickle = trickle
        self.requests = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    request += chunk
                self.requests += 1
                conn.sendall(self.trickle.at_once)
                for byte in self.trickle.trickled:
                    if self.stopping.wait(self.trickle.interval):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:  # the client hung up: what a client that gives up does
                return

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()


@pytest.fixture
def serve_trickle() -> Iterator[type[TrickleServer]]:
    servers: list[TrickleServer] = []

    def start(trickle: Trickle) -> TrickleServer:
        server = TrickleServer(trickle)
        servers.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()


async def call(
    kind: str, base_url: str, timeout: float, retry: RetryPolicy, method: str = "health"
) -> object:
    """`method` of the client: health (never retried) or list_asset_types (a read, retried)."""
    if kind == "async":
        async with AsyncWalletClient(base_url, timeout=timeout, retry=retry) as client:
            return await getattr(client, method)()

    def sync_call() -> object:  # the sync client blocks: off the event loop, as a caller's thread
        with WalletClient(base_url, timeout=timeout, retry=retry) as client:
            return getattr(client, method)()

    return await asyncio.to_thread(sync_call)


TRICKLES = {
    # The case: headers at once, then the body a byte a second (31 s in all).
    "body": Trickle(HEADERS, BODY, 1.0),
    # Headers themselves a byte at a time (every read is quick, none times out).
    "headers": Trickle(b"", HEADERS + BODY, 0.2),
}


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("part", list(TRICKLES))
async def test_a_trickling_answer_ends_the_attempt_at_its_timeout(kind, part, serve_trickle):
    server = serve_trickle(TRICKLES[part])
    started = time.monotonic()
    with pytest.raises(WalletConnectionError, match="ReadTimeout") as raised:
        await call(kind, server.base_url, 2.0, RetryPolicy.never())
    elapsed = time.monotonic() - started
    assert 1.9 < elapsed < 2.8, elapsed  # was 31 s (every read got its byte within the 2 s)
    assert "within 2 s" in str(raised.value)
    assert server.requests == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_each_retry_gets_a_whole_attempt_and_the_total_stays_bounded(kind, serve_trickle):
    body = b'{"data":[]}'
    headers = HEADERS.replace(b"%d" % len(BODY), b"%d" % len(body))
    server = serve_trickle(Trickle(headers, body, 1.0))
    retry = RetryPolicy(max_attempts=3, total_timeout=30, backoff_base=0.01, backoff_max=0.01)
    started = time.monotonic()
    with pytest.raises(WalletConnectionError) as raised:
        await call(kind, server.base_url, 1.0, retry, "list_asset_types")
    elapsed = time.monotonic() - started
    assert raised.value.attempts == 3 and server.requests == 3
    assert 2.9 < elapsed < 4.0, elapsed
    # total_timeout cuts the last attempt short too.
    retry = RetryPolicy(max_attempts=10, total_timeout=2.5, backoff_base=0.01, backoff_max=0.01)
    started = time.monotonic()
    with pytest.raises(WalletConnectionError):
        await call(kind, server.base_url, 1.0, retry, "list_asset_types")
    assert time.monotonic() - started < 3.3


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_slow_answer_that_arrives_within_the_timeout_is_read(kind, serve_trickle):
    server = serve_trickle(Trickle(HEADERS + BODY[:-5], BODY[-5:], 0.2))  # 1 s of trickle
    result = await call(kind, server.base_url, 3.0, RetryPolicy.never())
    assert getattr(result, "ok", None) is True
