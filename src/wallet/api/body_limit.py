"""Request bodies above WALLET_MAX_BODY_BYTES get 413, before anything parses them.

Called by the one request middleware (`wallet.api.observe.ObserveRequests`): it reads at most
limit+1 bytes whatever the client sends or claims in Content-Length, within
WALLET_REQUEST_BODY_TIMEOUT_MS for the whole body, then the application gets the body replayed.
"""

from __future__ import annotations

import asyncio

from starlette.types import Message, Receive, Scope, Send

from wallet.api.error_response import error_response
from wallet.domain import errors

# Methods whose requests are passed on without reading a body first.
WITHOUT_BODY = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


async def read_body(
    scope: Scope, receive: Receive, send: Send, *, max_body_bytes: int, body_timeout_s: float
) -> bytes | None:
    """The whole body, or None when it was refused (413, 408; answered here) or the client left."""
    for name, value in scope["headers"]:
        if name == b"content-length" and (not value.isdigit() or int(value) > max_body_bytes):
            await _reject(scope, receive, send, max_body_bytes)
            return None
    chunks: list[bytes] = []
    total = 0
    too_large = False
    try:
        # One deadline for the whole body (one timer per request, not one per chunk).
        async with asyncio.timeout(body_timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > max_body_bytes:
                    too_large = True
                    break
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        # A client that never finishes its body holds a connection and a worker's attention; it
        # is cut after WALLET_REQUEST_BODY_TIMEOUT_MS.
        response = error_response(
            errors.BODY_TIMEOUT,
            f"the request body did not arrive within {round(body_timeout_s * 1000)} ms",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)
        return None
    if too_large:
        await _reject(scope, receive, send, max_body_bytes)
        return None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """`receive` that first gives the whole body (already read), then what the client sends
    (the application reads the body once, from this)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _reject(scope: Scope, receive: Receive, send: Send, max_body_bytes: int) -> None:
    response = error_response(
        errors.BODY_TOO_LARGE,
        f"request body exceeds {max_body_bytes} bytes",
        headers={"Connection": "close"},
    )
    await response(scope, receive, send)
