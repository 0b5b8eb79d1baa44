"""The HTTP protocol `wallet serve` gives uvicorn (wallet.http_protocol): uvicorn's own, through
its public `http=` setting, with the writes of one turn of the event loop joined. Checked over
real sockets (not a fake transport), and the uvicorn symbols it relies on are pinned here, so a
uvicorn upgrade that moves them fails this file rather than the service."""

from __future__ import annotations

import asyncio
import inspect
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from wallet.http_protocol import FLUSH_BYTES, CoalescingHttpToolsProtocol, CoalescingTransport

CHUNK = 64 * 1024
CHUNKS = 512  # 32 MiB: far more than the socket buffers of a client that does not read


def test_the_uvicorn_symbols_it_relies_on():
    pinned = re.search(r"^uvicorn==(\S+)$", Path("requirements.lock").read_text(), re.M)
    assert pinned is not None and uvicorn.__version__ == pinned.group(1)
    assert list(inspect.signature(HttpToolsProtocol.connection_made).parameters) == ["self", "transport"]
    # The protocol keeps the transport it was given and its flow control drives that transport.
    source = inspect.getsource(HttpToolsProtocol.connection_made)
    assert "self.transport = transport" in source and "FlowControl(transport)" in source
    assert {"pause_writing", "resume_writing", "drain"} <= set(vars(FlowControl))
    config = uvicorn.Config("tools.hello_app:app", http=CoalescingHttpToolsProtocol)
    config.load()
    assert config.http_protocol_class is CoalescingHttpToolsProtocol
    # What wallet.workers uses: a server on given sockets, its start-up failure status.
    assert "sockets" in inspect.signature(uvicorn.Server.run).parameters
    assert STARTUP_FAILURE == 3
    assert callable(uvicorn.Config.configure_logging)


class App:
    """/small: one short answer. /stream: CHUNKS chunks of CHUNK bytes, counting what it sent."""

    def __init__(self) -> None:
        self.sent = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/small":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        length = str(CHUNK * CHUNKS).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]})
        for index in range(CHUNKS):
            await send({"type": "http.response.body", "body": b"x" * CHUNK, "more_body": index < CHUNKS - 1})
            self.sent += 1


@pytest.fixture
async def served() -> AsyncIterator[tuple[App, int]]:
    app = App()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=CoalescingHttpToolsProtocol, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    yield app, sock.getsockname()[1]
    server.should_exit = True
    await task
    sock.close()


async def _request(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def test_answers_arrive_whole_and_in_order_on_one_connection(served):
    _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Three requests pipelined: three whole answers, in order, each its headers and its body.
    writer.write(b"GET /small HTTP/1.1\r\nHost: t\r\n\r\n" * 3)
    await writer.drain()
    for _ in range(3):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 2" in head
        assert await reader.readexactly(2) == b"ok"
    writer.close()
    await writer.wait_closed()


async def test_a_client_that_does_not_read_holds_the_answer_back(served):
    """Back-pressure: the application's sends wait for a slow client instead of piling up."""
    app, port = served
    reader, writer = await _request(port, "/stream")
    await asyncio.sleep(1.0)  # the client reads nothing meanwhile
    assert app.sent < CHUNKS // 2, f"{app.sent} of {CHUNKS} chunks sent to a client that reads nothing"
    await reader.readuntil(b"\r\n\r\n")
    received = 0
    while received < CHUNK * CHUNKS:
        received += len(await reader.read(1 << 20))
    assert received == CHUNK * CHUNKS and app.sent == CHUNKS
    writer.close()
    await writer.wait_closed()


async def test_a_turns_writes_go_out_as_one_and_large_ones_at_once():
    class Recorder:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.writes.append(data)

        def is_closing(self) -> bool:
            return False

        def get_write_buffer_size(self) -> int:
            return 0

    recorder = Recorder()
    transport = CoalescingTransport(recorder, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"body")
    assert recorder.writes == [] and transport.get_write_buffer_size() == 23
    await asyncio.sleep(0)
    assert recorder.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    transport.write(b"h")
    transport.write(b"y" * FLUSH_BYTES)  # past the threshold: written at once, with what was held
    assert recorder.writes[-1] == b"h" + b"y" * FLUSH_BYTES
