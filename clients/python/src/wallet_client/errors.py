"""Exceptions: one hierarchy, every error of the service carrying its catalogue `code`.

    WalletError
    ├── WalletConnectionError         no answer after every retry (connection, timeout, 503)
    ├── UnexpectedResponse            an answer that does not follow the API contract
    └── WalletAPIError                the service answered with an error: .status .code .message .field
        ├── BadRequest                400 malformed_json, idempotency_key_missing, ...
        ├── Unauthorized              401 unauthenticated
        ├── Forbidden                 403 forbidden, key_operation_not_allowed, ...
        ├── NotFound                  404 user_not_found, transaction_not_found, hold_not_found, ...
        ├── Conflict                  409 refused by the state of the ledger
        │   ├── InsufficientFunds     409 insufficient_funds
        │   └── IdempotencyKeyInUse   409 idempotency_key_in_use (retried by default)
        ├── PayloadTooLarge           413 body_too_large
        ├── ValidationFailed          422 validation_error, limit_exceeded, invalid_request, same_user
        │   └── IdempotencyKeyReused  422 idempotency_key_reused
        ├── RateLimited               429 rate_limited (.retry_after)
        ├── InternalServerError       500 internal_error
        └── ServiceUnavailable        503 busy, database_unavailable (after every retry)

A code the client does not know yet still raises the class of its status, and an unknown status
raises `WalletAPIError`: `except WalletAPIError as e: e.code` always works.
"""

from __future__ import annotations


class WalletError(Exception):
    """Base of every exception this client raises."""


class UnexpectedResponse(WalletError):
    """A success answer whose body does not match the API contract (or is not JSON)."""


class WalletConnectionError(WalletError):
    """The service could not be reached, or did not answer in time, on every attempt.

    The write may or may not have been applied: call again with the same `idempotency_key`
    (it is on this exception) to find out without applying it twice."""

    def __init__(self, message: str, *, attempts: int, idempotency_key: str | None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.idempotency_key = idempotency_key


class WalletAPIError(WalletError):
    """The service answered with an error document `{"error": {"code", "message", "field"}}`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        *,
        idempotency_key: str | None = None,
        replayed: bool = False,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.idempotency_key = idempotency_key  # the key the request was sent with (writes)
        self.replayed = replayed  # the stored answer of an earlier request with this key
        self.retry_after = retry_after  # seconds, from Retry-After (429, 503)
        self.attempts = attempts


class BadRequest(WalletAPIError):
    pass


class Unauthorized(WalletAPIError):
    pass


class Forbidden(WalletAPIError):
    pass


class NotFound(WalletAPIError):
    pass


class Conflict(WalletAPIError):
    pass


class InsufficientFunds(Conflict):
    pass


class IdempotencyKeyInUse(Conflict):
    pass


class PayloadTooLarge(WalletAPIError):
    pass


class ValidationFailed(WalletAPIError):
    pass


class IdempotencyKeyReused(ValidationFailed):
    pass


class RateLimited(WalletAPIError):
    pass


class InternalServerError(WalletAPIError):
    pass


class ServiceUnavailable(WalletAPIError):
    pass


BY_CODE: dict[str, type[WalletAPIError]] = {
    "insufficient_funds": InsufficientFunds,
    "idempotency_key_in_use": IdempotencyKeyInUse,
    "idempotency_key_reused": IdempotencyKeyReused,
}

BY_STATUS: dict[int, type[WalletAPIError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationFailed,
    429: RateLimited,
    500: InternalServerError,
    503: ServiceUnavailable,
}


def error_class(status: int, code: str) -> type[WalletAPIError]:
    """The most specific class: by code when the code belongs to this status, else by status."""
    by_code = BY_CODE.get(code)
    if by_code is not None and BY_STATUS.get(status) in by_code.__mro__:
        return by_code
    return BY_STATUS.get(status, WalletAPIError)
