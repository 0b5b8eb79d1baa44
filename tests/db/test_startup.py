"""Start-up before the database: `wallet migrate` and each worker wait for PostgreSQL to accept
connections, with backoff, for WALLET_DB_STARTUP_WAIT_MS, instead of relying on a platform's
health conditions (compose's service_healthy, a Railway deploy racing its database)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from urllib.parse import urlsplit, urlunsplit

import pytest

from wallet.db.pool import wait_for_database
from wallet.settings import Settings


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def test_waits_for_a_database_that_comes_up_late(database_url):
    """Connections are refused for the first second (nothing listens), then the port forwards to
    the test server: the wait returns once it answers."""
    target = urlsplit(database_url)
    if not target.hostname or target.hostname.startswith("/"):
        pytest.skip("needs a TCP test server (WALLET_TEST_DATABASE_URL)")
    port = _closed_port()
    late_url = urlunsplit(target._replace(netloc=target.netloc.replace(f":{target.port}", f":{port}")))

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def come_up_late() -> asyncio.Server:
        await asyncio.sleep(1.0)
        return await asyncio.start_server(forward, "127.0.0.1", port)

    started = time.monotonic()
    late = asyncio.create_task(come_up_late())
    await wait_for_database(Settings(database_url=late_url, db_startup_wait_ms=20_000), late_url)
    assert 1.0 <= time.monotonic() - started < 10
    server = await late
    server.close()


async def test_gives_up_after_the_configured_wait_with_the_last_error():
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/wallet"
    started = time.monotonic()
    with pytest.raises(OSError):
        await wait_for_database(Settings(database_url=url, db_startup_wait_ms=1_000), url)
    assert 1.0 <= time.monotonic() - started < 5
