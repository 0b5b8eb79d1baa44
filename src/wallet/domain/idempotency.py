"""A write's idempotency key, as a value: made once per request from wherever the caller put it
(the `Idempotency-Key` header, the body's `idempotency_key`, or both when they agree), and valid
by construction, so that no layer below checks it again."""

from __future__ import annotations

import re
from dataclasses import dataclass

from wallet.domain import errors
from wallet.domain.errors import WalletError
from wallet.domain.rules import IDEMPOTENCY_KEY_PATTERN

_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    value: str

    @classmethod
    def of(cls, header_key: str | None, body_key: str | None, max_chars: int) -> IdempotencyKey:
        """The one key of a write. `header_key` is the header's value, unquoted (None when absent
        or empty); `body_key` was checked by the request model (its length and characters), so
        only a key that came from the header alone is checked here."""
        if body_key is not None:
            if header_key is not None and header_key != body_key:
                raise WalletError(
                    errors.INVALID_REQUEST,
                    "idempotency_key in the body differs from the Idempotency-Key header",
                    "idempotency_key",
                )
            return cls(body_key)
        if not header_key:
            raise WalletError(
                errors.IDEMPOTENCY_KEY_MISSING,
                "every write needs an idempotency key (Idempotency-Key header or idempotency_key field)",
            )
        if len(header_key) > max_chars or not _KEY.match(header_key):
            raise WalletError(
                errors.INVALID_REQUEST,
                f"idempotency key must be 1 to {max_chars} printable ASCII characters without spaces",
                "idempotency_key",
            )
        return cls(header_key)
