"""What only the synchronous face of the client does: one attempt within its timeout (in a thread
of its own), and the pause between attempts. The generated `client.py` calls this module where
`async_client.py` calls `_io_async`."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx


class _Abandonable(httpx.SyncByteStream):
    """A response body that stops at its next chunk once the caller has given up on it."""

    def __init__(
        self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, abandoned: threading.Event
    ) -> None:
        assert isinstance(stream, httpx.SyncByteStream)
        self._stream = stream
        self._abandoned = abandoned

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            if self._abandoned.is_set():
                raise httpx.ReadTimeout("the caller stopped waiting for this answer")
            yield chunk

    def close(self) -> None:
        self._stream.close()


def attempt(http: httpx.Client, request: dict[str, Any]) -> httpx.Response:
    """One attempt, in full within its timeout. httpx's timeout bounds each network read, so a
    body trickling in a byte at a time held an attempt for as long as the server liked. The
    attempt runs in a thread of its own; past the timeout the caller gets a ReadTimeout, and
    the thread drops the connection at its next read (or when that read times out)."""
    budget: float = request["timeout"]
    abandoned = threading.Event()
    done = threading.Event()
    outcome: list[httpx.Response | BaseException] = []

    def run() -> None:
        try:
            response = http.send(http.build_request(**request), stream=True)
            try:
                response.stream = _Abandonable(response.stream, abandoned)
                response.read()
            finally:
                response.close()
            outcome.append(response)
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)
        finally:
            done.set()

    context = contextvars.copy_context()  # the caller's (e.g. its tracing span)
    threading.Thread(target=context.run, args=(run,), name="wallet-client-attempt", daemon=True).start()
    if not done.wait(budget):
        abandoned.set()
        raise httpx.ReadTimeout(f"no complete answer within {budget:.3g} s (the attempt's timeout)")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def sleep(seconds: float) -> None:
    time.sleep(seconds)
