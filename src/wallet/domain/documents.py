"""The one order of keys in every JSON document the API answers with (README, "Key order").

Documents are built as jsonb by PostgreSQL, which keeps an object's keys ordered by length, then
bytes (`{"debt": 0, "held": 0, "name": ...}`), and some as Python objects. Neither is an order a
reader follows top-down, so every answer is put in this one order here, on its way out, by the
same function: a write's answer, its replay, GET and the history list the keys of a document
the same way.

Each object's keys, at every depth:
1. identity: `IDENTITY`, in that order (those present);
2. amounts: `AMOUNTS`, in that order;
3. the rest: `type` and `status`, then every other key in alphabetical order.
The value of `metadata` is the caller's object and is left as stored (jsonb: keys by length).

Numbers keep their JSON text (a fraction in metadata stays `1.10`, never a binary float).

A replay of a write stored before this order existed answers the stored bytes, verbatim:
migration 0010 kept each such record as the JSON string of the text it had answered with (a
stored body that is a JSON string, never a document, is that text).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

IDENTITY: tuple[str, ...] = (
    "id",
    "code",
    "user_id",
    "asset_type",
    "name",
    "account_id",
    "account",
    "lot_id",
    "event_id",
)
AMOUNTS: tuple[str, ...] = (
    "amount",
    "balance",
    "held",
    "available",
    "debt",
    "purchased",
    "granted",
    "balance_after",
    "fee",
    "reversed_amount",
    "captured_amount",
    "counterparty_balance_after",
)
FIRST_OF_THE_REST: tuple[str, ...] = ("type", "status")
# Where a value is the caller's own object, returned as it was stored.
VERBATIM: frozenset[str] = frozenset({"metadata"})

_RANK: dict[str, int] = {key: rank for rank, key in enumerate(IDENTITY + AMOUNTS + FIRST_OF_THE_REST)}
_LATER = len(_RANK)


def _key(key: str) -> tuple[int, str]:
    return (_RANK.get(key, _LATER), key)


def key_order(keys: list[str]) -> list[str]:
    """The keys of one object in the documented order."""
    return sorted(keys, key=_key)


# The order of each shape of object met so far (its keys as they came): documents come in a few
# shapes, so sorting is done once per shape, not per object. Bounded, for objects keyed by data.
_ORDERS: dict[tuple[str, ...], tuple[str, ...]] = {}
_ORDERS_MAX = 4096


def _order_of(keys: tuple[str, ...]) -> tuple[str, ...]:
    order = _ORDERS.get(keys)
    if order is None:
        order = tuple(sorted(keys, key=_key))
        if len(_ORDERS) < _ORDERS_MAX:
            _ORDERS[keys] = order
    return order


def ordered(value: Any) -> Any:
    """The value with every object's keys in the documented order (`metadata` values untouched)."""
    if isinstance(value, dict):
        result = {key: value[key] for key in _order_of(tuple(value))}
        for key, item in result.items():  # values replaced in place: the keys stay as they are
            if (type(item) is dict or type(item) is list) and key not in VERBATIM:
                result[key] = ordered(item)
        return result
    if isinstance(value, list):
        return [ordered(item) if type(item) is dict or type(item) is list else item for item in value]
    return value


# Numbers keep their JSON text. orjson reads a fraction or an exponent as a binary float (1.10
# would come back as 1.1), and an integer beyond 64 bits as a float too: a document in which a
# float turns up is read again by the standard library's decoder, each number kept as its text
# (orjson writes a Fragment as it is). Most documents hold none, and orjson is about three times
# as fast as that decoder (scanning the text for such numbers first cost more than it saved).
_EXACT_DECODER = json.JSONDecoder(parse_float=orjson.Fragment, parse_int=orjson.Fragment)


class _Inexact(Exception):
    """A float in what orjson decoded: the document is decoded again, exactly."""


def _holds_float(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
        elif type(item) is float:
            return True
    return False


def _ordered_exact(value: Any) -> Any:
    """`ordered`, for what orjson decoded: raises _Inexact on a float, metadata included."""
    if type(value) is dict:
        result = {key: value[key] for key in _order_of(tuple(value))}
        for key, item in result.items():
            kind = type(item)
            if kind is float:
                raise _Inexact
            if kind is dict or kind is list:
                if key not in VERBATIM:
                    result[key] = _ordered_exact(item)
                elif _holds_float(item):
                    raise _Inexact
        return result
    if type(value) is list:
        items = []
        for item in value:
            kind = type(item)
            if kind is float:
                raise _Inexact
            items.append(_ordered_exact(item) if kind is dict or kind is list else item)
        return items
    if type(value) is float:
        raise _Inexact
    return value


def render(document: str | bytes) -> bytes:
    """A JSON document (as PostgreSQL wrote it) with its keys in the documented order."""
    try:
        return orjson.dumps(_ordered_exact(orjson.loads(document)))
    except _Inexact:
        text = document.decode() if isinstance(document, bytes) else document
        return orjson.dumps(ordered(_EXACT_DECODER.decode(text)))


def stored_answer(body_json: str) -> bytes:
    """What a replay answers, given the body stored under its idempotency key: the text stored
    by an earlier revision verbatim, else the document in the documented order."""
    if body_json.startswith('"'):
        text = orjson.loads(body_json)
        assert isinstance(text, str)
        return text.encode()
    return render(body_json)
