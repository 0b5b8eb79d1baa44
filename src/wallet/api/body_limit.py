"""Rejects request bodies above WALLET_MAX_BODY_BYTES with 413, before anything parses them.

Pure ASGI rather than BaseHTTPMiddleware: it reads at most limit+1 bytes whatever the client
sends or claims in Content-Length, then replays the body to the application.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wallet.api.errors import error_response
from wallet.domain import errors


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout_ms: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_ms / 1000

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_body_bytes):
                await self._reject(scope, receive, send)
                return
        chunks: list[bytes] = []
        total = 0
        deadline = asyncio.get_running_loop().time() + self.body_timeout_s
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                # A client that never finishes its body holds a connection and a worker's
                # attention; it is cut after WALLET_REQUEST_BODY_TIMEOUT_MS.
                response = error_response(
                    errors.BODY_TIMEOUT,
                    f"the request body did not arrive within {round(self.body_timeout_s * 1000)} ms",
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            errors.BODY_TOO_LARGE,
            f"request body exceeds {self.max_body_bytes} bytes",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)
