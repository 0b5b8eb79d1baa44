"""The HTTP/1.1 protocol `wallet serve` gives uvicorn through its public `http=` setting: uvicorn's
own httptools protocol, whose writes within one turn of the event loop go out as one.

uvicorn writes a response's status line and headers, then its body: two `send` system calls per
response, about a sixth of a worker's CPU on the hot routes (py-spy, docs/PERFORMANCE.md). Each
connection here gets a transport that joins the writes of one turn and writes them at the end of
it, in order. A subclass, chosen per server (`uvicorn.Config(http=CoalescingHttpToolsProtocol)`),
not a replacement of uvicorn's method for every server of the process; and back-pressure is kept:
once the held bytes reach `FLUSH_BYTES` they are written at once, so the real transport sees them,
fills, and pauses the protocol's writing as it does without this (a large or streamed answer to
a slow client waits for it instead of piling up in memory).

It relies on uvicorn's `HttpToolsProtocol.connection_made(transport)` and on uvicorn using only
the transport it was given there; tests/test_http_protocol.py pins those symbols and checks the
behaviour over real sockets (uvicorn is pinned in requirements.lock).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Held bytes past which a turn's writes go out at once (the status line and headers of an answer
# are far below it; a body chunk this large is written as it comes).
FLUSH_BYTES = 64 * 1024


class CoalescingTransport:
    """A connection's transport whose writes within one turn of the event loop go out as one."""

    __slots__ = ("_held", "_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._held = 0

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)
        self._held += len(data)
        if self._held >= FLUSH_BYTES:
            self._flush()

    def writelines(self, lines: list[bytes]) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending.clear()
        self._held = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._held

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._held = 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        # Everything else (is_closing, get_extra_info, pause_reading, resume_reading...) is the
        # real transport's.
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        coalescing = CoalescingTransport(transport, asyncio.get_running_loop())
        super().connection_made(coalescing)  # type: ignore[arg-type]
