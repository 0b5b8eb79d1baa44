"""Request bodies parsed exactly: the JSON text decides, never a binary float.

Every router that takes a JSON body uses `ExactJSONRoute`, whose requests parse their body with
the standard library's decoder set up so that:
* a number with a fraction or an exponent becomes a `Decimal`, so `1.99999999999999999` stays
  what it is and the amount validator refuses it (it is not a whole number), however close;
* `NaN`, `Infinity` and numbers too large for a double are malformed JSON (400), not values;
* an object with the same key twice is malformed JSON (400), not "the last one wins";
* the text is UTF-8, strictly: UTF-16 or UTF-32 (which `json.loads` would guess from the bytes),
  Latin-1 or encoded surrogates are 400 `malformed_body`, not decoded some other way.
A body that is not valid JSON is not refused here but handed on as a `MalformedBody`: FastAPI
then runs the route's dependencies first (authentication and scope: 401 and 403 come before any
complaint about the body), and the body's validation fails on it (every request model refuses
anything but a JSON object, see `wallet.api.schemas.RequestBody`), which `wallet.api.errors`
answers as 400 `malformed_json` (or `malformed_body`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from decimal import Decimal, InvalidOperation
from typing import Any

from fastapi import Request, Response

from wallet.api.request_only import RequestOnlyRoute


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
    """Raises UnicodeDecodeError for a body that is not UTF-8, JSONDecodeError for one that is
    not JSON as above."""
    text = body.decode("utf-8")  # strict: no guessing of UTF-16/32, no surrogates
    if text.startswith("\ufeff"):
        raise json.JSONDecodeError("a byte order mark before the JSON text", text[:1], 0)
    try:
        return json.loads(text, parse_float=_number, parse_constant=_constant, object_pairs_hook=_object)
    except json.JSONDecodeError as exc:
        if exc.doc is not text:  # one of ours above: the message says what
            raise
        # The decoder's own: where (a trailing comma, a quote missing, the text cut short).
        where = f"line {exc.lineno} column {exc.colno}" if "\n" in text else f"character {exc.pos + 1}"
        raise json.JSONDecodeError(f"{exc.msg} at {where}", text, exc.pos) from None


class MalformedBody:
    """Stands for a body that is not valid JSON, with the reason, until validation meets it.
    `utf8` is false when the bytes are not even UTF-8 text (400 `malformed_body`)."""

    def __init__(self, reason: str, *, utf8: bool = True) -> None:
        self.reason = reason
        self.utf8 = utf8

    def __repr__(self) -> str:
        return "<malformed JSON body>"


class ExactJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                if b"\x00" in body:  # valid UTF-8, but never in JSON text: UTF-16 or UTF-32
                    raise UnicodeDecodeError("utf-8", body, body.index(b"\x00"), len(body), "NUL byte")
                self._json: Any = loads_exact(body)
            except UnicodeDecodeError as exc:
                reason = "a NUL byte (UTF-16 or UTF-32?)" if exc.reason == "NUL byte" else "an invalid byte"
                self._json = MalformedBody(f"{reason} at byte {exc.start}", utf8=False)
            except (json.JSONDecodeError, RecursionError) as exc:
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
                self._json = MalformedBody(reason)
        return self._json


class ExactJSONRoute(RequestOnlyRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def exact_handler(request: Request) -> Response:
            return await handler(ExactJSONRequest(request.scope, request.receive))

        return exact_handler
