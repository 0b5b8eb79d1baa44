"""Request bodies parsed exactly: the JSON text decides, never a binary float.

Every router that takes a JSON body uses `ExactJSONRoute`, whose requests parse their body with
the standard library's decoder set up so that:
* a number with a fraction or an exponent becomes a `Decimal`, so `1.99999999999999999` stays
  what it is and the amount validator refuses it (it is not a whole number), however close;
* `NaN`, `Infinity` and numbers too large for a double are malformed JSON (400), not values;
* an object with the same key twice is malformed JSON (400), not "the last one wins".
A body that is not valid JSON is not refused here but handed on as a `MalformedBody`: FastAPI
then runs the route's dependencies first (authentication and scope: 401 and 403 come before any
complaint about the body), and the body's validation fails on it, which `wallet.api.errors`
answers as 400 `malformed_json`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from decimal import Decimal, InvalidOperation
from typing import Any

from fastapi import Request, Response

from wallet.api.fast_path import FastPathRoute


def _number(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the decoder only hands over valid numbers
        raise json.JSONDecodeError(f"bad number {text}", text, 0) from None
    if not math.isfinite(float(value)):
        raise json.JSONDecodeError(f"number out of range: {text[:40]}", text, 0)
    return value


def _constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not a JSON number", name, 0)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise json.JSONDecodeError(f"duplicate key {key!r}", key, 0)
        result[key] = value
    return result


def loads_exact(body: bytes) -> Any:
    return json.loads(body, parse_float=_number, parse_constant=_constant, object_pairs_hook=_object)


class MalformedBody:
    """Stands for a body that is not valid JSON, with the reason, until validation meets it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return "<malformed JSON body>"


class ExactJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json: Any = loads_exact(await self.body())
            except (json.JSONDecodeError, RecursionError) as exc:
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
                self._json = MalformedBody(reason)
        return self._json


class ExactJSONRoute(FastPathRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def exact_handler(request: Request) -> Response:
            return await handler(ExactJSONRequest(request.scope, request.receive))

        return exact_handler
