"""A write's free-form `metadata`: what PostgreSQL can store of it, and its one JSON encoding.

The request models check it with these (wallet.api.write_bodies: NUL characters, nesting, size as
JSON) and the services encode it with `metadata_json` for the database, the same encoding."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson


def contains_nul(value: Any) -> bool:
    """PostgreSQL text and jsonb cannot hold U+0000; such input is refused up front."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(contains_nul(v) for v in value)
    return False


def depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion (a hostile body may nest thousands deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item)
    return deepest


def _exact_number(value: Any) -> orjson.Fragment:
    """Numbers with a fraction or exponent arrive as Decimal (wallet.api.json_body) and are
    written back as the same JSON number text."""
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value).encode())
    raise TypeError(f"{type(value).__name__} is not JSON")


def metadata_json(metadata: dict[str, Any] | None) -> str:
    """The metadata as the JSON text stored (`{}` for none). Raises orjson.JSONEncodeError for
    what cannot be stored and given back as the same JSON (integers beyond 64 bits, lone
    surrogates, nesting deeper than the encoder takes): the request models refuse those first."""
    return orjson.dumps(metadata or {}, default=_exact_number).decode()
