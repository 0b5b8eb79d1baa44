"""The catalogue: every outcome a request can have and every error code a caller can see, each
defined once, with its meaning and the request field it names.

The database functions return these codes (`posted`, `insufficient_funds`, ...), never HTTP
statuses; Python raises `WalletError` with them. `wallet.api.errors` is the only place that maps a
code to an HTTP status, and a test checks that every code the SQL can emit is defined here and that
every code here is declared in the OpenAPI document.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    meaning: str
    field: str | None = None  # the request field it names by default, if any
    success: bool = False  # an outcome that did what was asked, not an error

    def __str__(self) -> str:
        return self.code


CATALOGUE: dict[str, Code] = {}


def _define(code: str, meaning: str, field: str | None = None, *, success: bool = False) -> Code:
    assert code not in CATALOGUE, code
    entry = Code(code, meaning, field, success)
    CATALOGUE[code] = entry
    return entry


# Outcomes of a write that did what was asked.
POSTED = _define("posted", "the write was applied; the body is what it created", success=True)
APPLIED = _define(
    "applied", "the change was applied to an existing resource; the body is its state", success=True
)

# The request itself is unusable.
MALFORMED_JSON = _define("malformed_json", "the body is not valid JSON")
MALFORMED_BODY = _define("malformed_body", "the body could not be read (e.g. not UTF-8)")
IDEMPOTENCY_KEY_MISSING = _define(
    "idempotency_key_missing",
    "every write needs an Idempotency-Key header or idempotency_key field",
    "idempotency_key",
)
IDEMPOTENCY_KEY_MALFORMED = _define(
    "idempotency_key_malformed",
    "the Idempotency-Key header is repeated or not a valid string",
    "idempotency_key",
)
BODY_TIMEOUT = _define(
    "body_timeout", "the request body did not arrive within WALLET_REQUEST_BODY_TIMEOUT_MS"
)
BODY_TOO_LARGE = _define("body_too_large", "the body exceeds WALLET_MAX_BODY_BYTES")
VALIDATION_ERROR = _define("validation_error", "a field is missing, of the wrong type, or out of its format")
LIMIT_EXCEEDED = _define("limit_exceeded", "a field exceeds a configured limit (amount, size, count)")
INVALID_REQUEST = _define("invalid_request", "a value is not acceptable (e.g. an unknown cursor)")
NOT_FOUND = _define("not_found", "no such endpoint")
METHOD_NOT_ALLOWED = _define("method_not_allowed", "the endpoint does not answer this method")

# Who is asking.
UNAUTHENTICATED = _define("unauthenticated", "missing, unknown or revoked API key")
FORBIDDEN = _define("forbidden", "the API key lacks the scope this needs")
KEY_OPERATION_NOT_ALLOWED = _define(
    "key_operation_not_allowed", "the API key is restricted to other operations"
)
KEY_ASSET_NOT_ALLOWED = _define(
    "key_asset_not_allowed", "the API key is restricted to other asset types", "asset_type"
)
KEY_AMOUNT_OVER_LIMIT = _define(
    "key_amount_over_limit",
    "the amount (with a transfer's fee) exceeds the API key's maximum per operation",
    "amount",
)
RATE_LIMITED = _define(
    "rate_limited",
    "the client sent more requests than its rate limit, or its address too many unknown API keys; "
    "retry after Retry-After seconds",
)

# What the request refers to.
USER_NOT_FOUND = _define("user_not_found", "no user with this id", "user_id")
ASSET_TYPE_NOT_FOUND = _define("asset_type_not_found", "no active asset type with this code", "asset_type")
TRANSACTION_NOT_FOUND = _define("transaction_not_found", "no transaction with this id", "id")
HOLD_NOT_FOUND = _define("hold_not_found", "no hold with this id", "id")
SAME_USER = _define("same_user", "a transfer needs two different users", "to_user_id")
WEBHOOK_NOT_FOUND = _define("webhook_not_found", "no webhook endpoint with this id", "id")
DEAD_LETTER_NOT_FOUND = _define(
    "dead_letter_not_found", "no dead letter with this id for this webhook endpoint", "dead_letter_id"
)

# The state of the ledger refuses it.
INSUFFICIENT_FUNDS = _define(
    "insufficient_funds", "the user's available balance does not cover the amount", "amount"
)
BALANCE_LIMIT_EXCEEDED = _define(
    "balance_limit_exceeded", "the resulting balance would be too large", "amount"
)
USER_EXISTS = _define("user_exists", "a user with this id exists with another name", "user_id")
HOLD_ALREADY_CAPTURED = _define("hold_already_captured", "the hold was captured already (at most once)")
HOLD_ALREADY_VOIDED = _define("hold_already_voided", "the hold was voided already")
HOLD_EXPIRED = _define("hold_expired", "the hold expired; its credits were released")
AMOUNT_EXCEEDS_HOLD = _define(
    "amount_exceeds_hold", "a capture cannot take more than the hold reserved", "amount"
)
NOT_REVERSIBLE = _define(
    "not_reversible", "only top-ups, bonuses, spends and captures can be reversed", "transaction_id"
)
AMOUNT_EXCEEDS_REVERSIBLE = _define(
    "amount_exceeds_reversible", "more than what is left of the original to reverse", "amount"
)
AMOUNT_EXCEEDS_CLAWABLE = _define(
    "amount_exceeds_clawable",
    "a clawback takes at most what is left, unspent and unexpired, of its original's credits (an"
    " admin's with allow_negative: all but what of them expired)",
    "amount",
)

# Idempotency.
IDEMPOTENCY_KEY_IN_USE = _define(
    "idempotency_key_in_use",
    "another request with this key is still being processed; retry later",
    "idempotency_key",
)
IDEMPOTENCY_KEY_REUSED = _define(
    "idempotency_key_reused", "this key was already used with a different request", "idempotency_key"
)

# The service.
BUSY = _define("busy", "a lock or statement timeout; nothing was written, retry with the same key")
DATABASE_UNAVAILABLE = _define(
    "database_unavailable", "the database is unreachable; nothing was written, retry with the same key"
)
INTERNAL_ERROR = _define("internal_error", "a bug; it has been logged")


def error_codes() -> list[str]:
    return sorted(code for code, entry in CATALOGUE.items() if not entry.success)


class WalletError(Exception):
    """A refusal the caller should see, with its catalogue code."""

    def __init__(
        self, code: Code, message: str, field: str | None = None, *, retry_after_s: int | None = None
    ) -> None:
        assert not code.success, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field if field is not None else code.field
        self.retry_after_s = retry_after_s  # sent as Retry-After (429)
