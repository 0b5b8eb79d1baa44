"""Domain errors: what went wrong, in the caller's terms. HTTP statuses are assigned in one place,
`wallet.api.errors`; nothing below the HTTP layer knows about status codes except the stored
outcome of an idempotent write, which must replay exactly.
"""

from __future__ import annotations


class WalletError(Exception):
    """Base of every error a caller may see. `code` is stable and machine-readable."""

    code = "wallet_error"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidRequest(WalletError):
    code = "invalid_request"


class LimitExceeded(WalletError):
    code = "limit_exceeded"


class IdempotencyKeyMissing(WalletError):
    code = "idempotency_key_missing"


class NotFound(WalletError):
    code = "not_found"


class UserNotFound(NotFound):
    code = "user_not_found"


class AssetTypeNotFound(NotFound):
    code = "asset_type_not_found"


class TransactionNotFound(NotFound):
    code = "transaction_not_found"


class Conflict(WalletError):
    code = "conflict"


class UserExists(Conflict):
    code = "user_exists"


class BalanceLimitExceeded(Conflict):
    code = "balance_limit_exceeded"


class Unauthenticated(WalletError):
    code = "unauthenticated"


class Forbidden(WalletError):
    code = "forbidden"


class Busy(WalletError):
    """A lock or statement timeout: the write did not happen and is safe to retry."""

    code = "busy"
