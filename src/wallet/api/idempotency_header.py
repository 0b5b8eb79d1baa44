"""The `Idempotency-Key` header as the IETF draft defines it: a structured-field string, so `"abc"`
and `abc` are one key; sent twice it is refused, sent empty it is missing. Read once per write,
by `wallet.api.write.accept`, into the write's `IdempotencyKey`."""

from __future__ import annotations

from starlette.requests import Request

from wallet.domain import errors
from wallet.domain.errors import WalletError


def idempotency_key_header(request: Request) -> str | None:
    """The header's key, unquoted; None when it is absent or empty."""
    values = request.headers.getlist("idempotency-key")
    if len(values) > 1:
        raise WalletError(errors.IDEMPOTENCY_KEY_MALFORMED, "send one Idempotency-Key header, not several")
    if not values or not values[0].strip():
        return None
    value = values[0].strip()
    if value.startswith('"'):
        return _structured_string(value) or None
    if '"' in value:
        raise WalletError(
            errors.IDEMPOTENCY_KEY_MALFORMED,
            'Idempotency-Key has a quote (") but is not a quoted string: send abc or "abc"',
        )
    return value


def _structured_string(value: str) -> str:
    """An RFC 8941 string: `"` ... `"`, where only `\\"` and `\\\\` are escapes and nothing
    follows the closing quote (`"abc`, `"a",b` and `"a\\x"` are malformed, not keys)."""
    chars: list[str] = []
    index = 1
    while index < len(value):
        char = value[index]
        if char == "\\":
            if index + 1 == len(value) or value[index + 1] not in '"\\':
                raise WalletError(
                    errors.IDEMPOTENCY_KEY_MALFORMED,
                    'Idempotency-Key is not a valid quoted string: only \\" and \\\\ may follow a backslash',
                )
            chars.append(value[index + 1])
            index += 2
            continue
        if char == '"':
            if index != len(value) - 1:
                raise WalletError(
                    errors.IDEMPOTENCY_KEY_MALFORMED,
                    "Idempotency-Key is not a valid quoted string: something follows the closing quote",
                )
            return "".join(chars)
        chars.append(char)
        index += 1
    raise WalletError(
        errors.IDEMPOTENCY_KEY_MALFORMED, "Idempotency-Key is not a valid quoted string: no closing quote"
    )
