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


# Fractions and exponents as their text (orjson writes a Fragment as it is); integers as ints
# (PostgreSQL's bigints and metadata's 64-bit integers, the C decoder's fast path).
_DECODER = json.JSONDecoder(parse_float=orjson.Fragment)
_EXACT_DECODER = json.JSONDecoder(parse_float=orjson.Fragment, parse_int=orjson.Fragment)


def render(document: str | bytes) -> bytes:
    """A JSON document (as PostgreSQL wrote it) with its keys in the documented order."""
    text = document.decode() if isinstance(document, bytes) else document
    try:
        return orjson.dumps(ordered(_DECODER.decode(text)))
    except orjson.JSONEncodeError:  # an integer beyond 64 bits (a sum): kept as its text
        return orjson.dumps(ordered(_EXACT_DECODER.decode(text)))


def stored_answer(body_json: str) -> bytes:
    """What a replay answers, given the body stored under its idempotency key: the text stored
    by an earlier revision verbatim, else the document in the documented order."""
    if body_json.startswith('"'):
        text = orjson.loads(body_json)
        assert isinstance(text, str)
        return text.encode()
    return render(body_json)
