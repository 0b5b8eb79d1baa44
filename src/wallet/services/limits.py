"""The configured limits every write checks before it reaches the database, each raising with the
catalogue code and the field it names. Shared by every operation so that each limit is enforced
the same way everywhere (the hard ceilings are also CHECK constraints in the schema)."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import orjson

from wallet.domain import errors
from wallet.domain.errors import WalletError
from wallet.domain.rules import IDEMPOTENCY_KEY_PATTERN, METADATA_MAX_DEPTH
from wallet.settings import Settings

_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def resolve_idempotency_key(body_key: str | None, header_key: str | None) -> str:
    """The key may come in the body or in the `Idempotency-Key` header, but must be one key."""
    if body_key is not None and header_key is not None and body_key != header_key:
        raise WalletError(
            errors.INVALID_REQUEST,
            "idempotency_key in the body differs from the Idempotency-Key header",
            "idempotency_key",
        )
    key = body_key if body_key is not None else header_key
    if not key:
        raise WalletError(
            errors.IDEMPOTENCY_KEY_MISSING,
            "every write needs an idempotency key (Idempotency-Key header or idempotency_key field)",
        )
    return key


def check_idempotency_key(key: str | None, settings: Settings) -> str:
    if not key:
        raise WalletError(errors.IDEMPOTENCY_KEY_MISSING, "every write needs an idempotency key")
    if len(key) > settings.max_idempotency_key_chars or not _IDEMPOTENCY_KEY.match(key):
        raise WalletError(
            errors.INVALID_REQUEST,
            f"idempotency key must be 1 to {settings.max_idempotency_key_chars} printable ASCII "
            "characters without spaces",
            "idempotency_key",
        )
    return key


def check_amount(amount_minor: int, settings: Settings, field: str = "amount") -> int:
    assert amount_minor >= 0, "the request models refuse negative amounts"
    if amount_minor > settings.max_amount_minor:
        raise WalletError(
            errors.LIMIT_EXCEEDED, f"{field} must not exceed {settings.max_amount_minor} (minor units)", field
        )
    return amount_minor


def _contains_nul(value: Any) -> bool:
    """PostgreSQL text and jsonb cannot hold U+0000; such input is refused up front."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(v) for v in value)
    return False


def check_text(text: str | None, settings: Settings, field: str = "description") -> str | None:
    if text is not None and len(text) > settings.max_description_chars:
        raise WalletError(
            errors.LIMIT_EXCEEDED,
            f"{field} must not exceed {settings.max_description_chars} characters",
            field,
        )
    if _contains_nul(text):
        raise WalletError(errors.INVALID_REQUEST, f"{field} must not contain NUL characters", field)
    return text


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion (a hostile body may nest thousands deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _exact_number(value: Any) -> orjson.Fragment:
    """Numbers with a fraction or exponent arrive as Decimal (wallet.api.json_body) and are
    written back as the same JSON number text."""
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value).encode())
    raise TypeError(f"{type(value).__name__} is not JSON")


def encode_metadata(metadata: dict[str, Any] | None, settings: Settings, field: str = "metadata") -> bytes:
    """The metadata as JSON, encoded once for both the size check and the database."""
    if _contains_nul(metadata):
        raise WalletError(errors.INVALID_REQUEST, f"{field} must not contain NUL characters", field)
    if _depth(metadata) > METADATA_MAX_DEPTH:
        raise WalletError(
            errors.LIMIT_EXCEEDED, f"{field} must not nest deeper than {METADATA_MAX_DEPTH} levels", field
        )
    try:
        metadata_json = orjson.dumps(metadata or {}, default=_exact_number)
    except orjson.JSONEncodeError as exc:
        # Integers beyond 64 bits, lone UTF-16 surrogates, nesting deeper than the encoder takes:
        # values the service could not store and give back as the same JSON.
        raise WalletError(errors.INVALID_REQUEST, f"{field} cannot be stored as JSON: {exc}", field) from None
    if len(metadata_json) > settings.max_metadata_bytes:
        raise WalletError(
            errors.LIMIT_EXCEEDED,
            f"{field} must not exceed {settings.max_metadata_bytes} bytes as JSON",
            field,
        )
    return metadata_json
