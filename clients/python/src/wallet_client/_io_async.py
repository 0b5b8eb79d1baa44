"""What only the asyncio face of the client does: one attempt within its timeout, and the pause
between attempts. `_io_sync` is the same for the synchronous face; `async_client.py` calls this
module and the generated `client.py` that one (unasync renames `_io_async` to `_io_sync`)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx


async def attempt(http: httpx.AsyncClient, request: dict[str, Any]) -> httpx.Response:
    """One attempt, in full within its timeout: httpx's timeout bounds each network read, so a
    body trickling in a byte at a time held an attempt for as long as the server liked."""
    budget: float = request["timeout"]
    try:
        async with asyncio.timeout(budget):
            return await http.request(**request)
    except TimeoutError:
        raise httpx.ReadTimeout(f"no complete answer within {budget:.3g} s (the attempt's timeout)") from None


async def sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)
