"""A lighter path for the hottest routes' common case, beside FastAPI's full one.

FastAPI solves a route's dependencies per request (the pool, the settings, the bearer scheme, the
caller, the Idempotency-Key header, the body), each through its own layer of checks: measured
with py-spy on single top-ups, that machinery was about a sixth of a worker's CPU. For a route
marked with `@fast_path(handler)`, `handler` runs first. It only handles requests it fully
understands (a plain bearer token, one Idempotency-Key header, a JSON body that the route's own
model accepts, no query string) and hands everything else to the route's full handler unchanged.
So every error still comes from the one full path, in its order of checks and its error shape,
and the OpenAPI document is the route's own; the fast handler calls the same service function
as the full one, after the same authentication, rate limit and scope check.

`HotRoutes` goes one step further: the application (`wallet.api.app.WalletApp`) hands it every
HTTP request first, and it runs the fast handler of a marked route without Starlette's and
FastAPI's layers (middleware stack, matching through the included routers, exception wrappers):
an exact lookup of (method, path), or the route's own path pattern. An exception is answered by
the application's own exception handlers (the one error shape); a request the fast handler does
not take goes on to the full application, marked so the route does not try it twice.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from wallet.api.body_limit import replaying
from wallet.api.dependencies import Resources, authenticate_request, resources_of, settings_of
from wallet.api.observe import BODY_SCOPE_KEY
from wallet.services.api_keys import Caller
from wallet.settings import Settings

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
# A fast handler returns None when the request is not its common case.
FastHandler = Callable[[Request], Awaitable[Response | None]]
F = TypeVar("F", bound=Callable[..., Any])

FAST_PATH_ATTRIBUTE = "__wallet_fast_path__"
# Set in a request's scope when HotRoutes ran the fast handler and handed the request on.
TRIED_SCOPE_KEY = "wallet.fast_path_tried"
FAST_PATH = Counter(
    "wallet_fast_path_total", "Requests of fast-path routes, by whether it took them", ["taken"]
)


def fast_path(handler: FastHandler) -> Callable[[F], F]:
    """Marks a route's endpoint with its fast handler; put it below the route decorator."""

    def mark(endpoint: F) -> F:
        setattr(endpoint, FAST_PATH_ATTRIBUTE, handler)
        return endpoint

    return mark


class FastPathRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        full = super().get_route_handler()
        fast: FastHandler | None = getattr(self.endpoint, FAST_PATH_ATTRIBUTE, None)
        if fast is None:
            return full

        async def handler(request: Request) -> Response:
            if request.scope.get(TRIED_SCOPE_KEY):
                return await full(request)
            response = await fast(request)
            if response is None:
                FAST_PATH.labels("no").inc()
                return await full(request)
            FAST_PATH.labels("yes").inc()
            return response

        return handler


def bearer_token(request: Request) -> str | None:
    """The token of a single, well-formed `Authorization: Bearer <token>` header, else None."""
    values = request.headers.getlist("authorization")
    if len(values) != 1:
        return None
    scheme, _, token = values[0].partition(" ")
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def is_json(request: Request) -> bool:
    content_type = request.headers.get("content-type", "")
    return content_type == "application/json" or content_type.startswith("application/json;")


def state(request: Request) -> tuple[Resources, Settings]:
    return resources_of(request), settings_of(request)


async def authorized(request: Request, token: str) -> Caller:
    """What the full path's caller dependency does (the same function): authenticate, with failed
    lookups limited per address, then the client's rate limit."""
    return await authenticate_request(request, token)


def fast_handler_of(route: APIRoute) -> FastHandler | None:
    handler: FastHandler | None = getattr(route.endpoint, FAST_PATH_ATTRIBUTE, None)
    return handler


@dataclass(frozen=True, slots=True)
class HotRoute:
    route: APIRoute
    method: str
    fast: FastHandler
    request_class: type[Request]  # what the route's own handler would build (exact JSON parsing)


class HotRoutes:
    """Runs the fast handlers of `routes` before any routing; hands everything else to `full`."""

    def __init__(
        self, app: FastAPI, full: ASGIApp, routes: list[HotRoute], *, traced: Callable[[], bool]
    ) -> None:
        self.app = app
        self.full = full
        # When FastAPI's OpenTelemetry instrumentation is on, every request goes the full way, so
        # the hot routes are traced too. Asked at the first request (after the lifespan set it up).
        self.traced = traced
        self.active: bool | None = None
        self.exact: dict[tuple[str, str], HotRoute] = {}
        self.patterns: list[HotRoute] = []
        for hot in routes:
            if hot.route.param_convertors:
                self.patterns.append(hot)
            else:
                self.exact[(hot.method, hot.route.path)] = hot

    def _match(self, method: str, path: str) -> tuple[HotRoute, dict[str, Any]] | None:
        hot = self.exact.get((method, path))
        if hot is not None:
            return hot, {}
        for hot in self.patterns:
            if hot.method == method:
                match = hot.route.path_regex.match(path)
                if match:
                    convertors = hot.route.param_convertors
                    params = {k: convertors[k].convert(v) for k, v in match.groupdict().items()}
                    return hot, params
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.active is None:
            self.active = not self.traced()
        found = None
        if self.active and not scope.get("root_path"):
            found = self._match(scope["method"], scope["path"])
        if found is None:
            await self.full(scope, receive, send)
            return
        hot, params = found
        # What the router would have recorded (the access line and the metrics read the route).
        scope["app"] = self.app
        scope["route"] = hot.route
        scope["endpoint"] = hot.route.endpoint
        scope["path_params"] = params
        request = hot.request_class(scope, receive)
        try:
            response = await hot.fast(request)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        else:
            if response is None:
                FAST_PATH.labels("no").inc()
                scope[TRIED_SCOPE_KEY] = True
                body = scope.get(BODY_SCOPE_KEY)
                await self.full(scope, receive if body is None else replaying(body, receive), send)
                return
            FAST_PATH.labels("yes").inc()
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> Callable[[Request, Any], Response | Awaitable[Response]] | None:
        """The application's handler for `exc`, as Starlette looks it up (nearest class first)."""
        handlers = self.app.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                return handlers[cls]
        return None
