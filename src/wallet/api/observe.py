"""The one request middleware: id, metrics, access log, HEAD as GET, and the body-size limit.

One pure ASGI layer does all of it, with one wrapper of `send` per request (not three layers of
wrappers; py-spy showed each layer's cost on the hot routes):
* the request id is the caller's `X-Request-ID` when it is a sane token (1-128 characters of
  `[A-Za-z0-9._:@/+=-]`), else a new UUID; it is returned in `X-Request-ID`, bound to every log
  line of the request (structlog contextvars), and stored with the transaction it creates;
* every answer is counted by method, route template and status (labels stay bounded whatever
  the path), whichever layer produced it (401, 408, 413, 422, 500 and 503 included);
* the access line: method, route template, status, duration, the API key's name (never the key
  itself, never a body), at INFO (WALLET_ACCESS_LOG=0 turns it off);
* HEAD is answered as GET without the body (`wallet.api.head`);
* a request body is read in full, within its size and time limits, before the application sees
  it (`wallet.api.body_limit`); the application gets it replayed.

It is the application's outermost layer (`wallet.api.app.WalletApp.build_middleware_stack`), so
even Starlette's own 500 answers carry the request id and are counted.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wallet.api.body_limit import WITHOUT_BODY, read_body, replaying
from wallet.api.head import as_get, without_body
from wallet.domain import rules
from wallet.services.tracing import REQUEST_ID

REQUEST_ID_HEADER = b"x-request-id"
REQUEST_ID_PATTERN = re.compile(f"[{rules.REQUEST_ID_CHARACTERS}]{{1,{rules.REQUEST_ID_MAX_CHARS}}}".encode())

RESPONSES = Counter(
    "wallet_http_responses_total",
    "Every HTTP answer, by method, route template and status",
    ["method", "route", "status"],
)

log = structlog.get_logger("wallet.access")


def request_id_of(scope: Scope) -> str | None:
    """The id ObserveRequests gave this request."""
    value = scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


def note_api_key(scope: Scope, name: str) -> None:
    """Records who asked, for the access line (called once the key is authenticated)."""
    scope.setdefault("state", {})["api_key_name"] = name


# The counter's children by (method, route template, status): `labels()` validates and locks per
# call, a cost on every answer; the set is bounded as the labels are.
_COUNTERS: dict[tuple[str, str, int], Any] = {}


def _count(method: str, route: str, status: int) -> None:
    key = (method, route, status)
    child = _COUNTERS.get(key)
    if child is None:
        child = _COUNTERS[key] = RESPONSES.labels(method, route, status)
    child.inc()


def _route_of(scope: Scope) -> str:
    """The template of the route that answered; the router records it in the request's scope
    (a dict shared down the stack). A path no route matched is 'unmatched'."""
    route = scope.get("route")
    return str(getattr(route, "path", "unmatched"))


class ObserveRequests:
    def __init__(self, app: ASGIApp, *, access_log: bool, max_body_bytes: int, body_timeout_ms: int) -> None:
        self.app = app
        self.access_log = access_log
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_ms / 1000

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                if REQUEST_ID_PATTERN.fullmatch(value):
                    request_id = value.decode("ascii")
                break
        request_id = request_id or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        method = scope["method"]
        head = method == "HEAD"
        # The scope the application gets (the router records the route in it).
        inner = as_get(scope) if head else scope
        request_id_header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        status = 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                _count(method, _route_of(inner), status)
                message = {**message, "headers": [*message.get("headers", ()), request_id_header]}
            elif head:
                stripped = without_body(message)
                if stripped is None:
                    return
                message = stripped
            await send(message)

        token = REQUEST_ID.set(request_id)
        # bind/reset rather than the bound_contextvars context manager: the same, without a
        # generator per request.
        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            if method in WITHOUT_BODY:
                await self.app(inner, receive, observed_send)
            else:
                body = await read_body(
                    inner,
                    receive,
                    observed_send,
                    max_body_bytes=self.max_body_bytes,
                    body_timeout_s=self.body_timeout_s,
                )
                if body is not None:
                    await self.app(inner, replaying(body, receive), observed_send)
        finally:
            REQUEST_ID.reset(token)
            if self.access_log:
                log.info(
                    "request",
                    method=method,
                    route=_route_of(inner),
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                    api_key=scope.get("state", {}).get("api_key_name"),
                )
            structlog.contextvars.reset_contextvars(**bound)
