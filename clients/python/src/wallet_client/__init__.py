"""Python client of the wallet service: `WalletClient` (sync) and `AsyncWalletClient` (asyncio).

from wallet_client import WalletClient, InsufficientFunds

with WalletClient("http://127.0.0.1:8000", api_key) as wallet:
    tx = wallet.topup("user_001", "GOLD_COINS", 500, idempotency_key="order-8812")
    print(tx.id, tx.balance_after, tx.replayed)
"""

from wallet_client._core import RetryPolicy, __version__
from wallet_client.async_client import AsyncWalletClient
from wallet_client.client import WalletClient
from wallet_client.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InsufficientFunds,
    InternalServerError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
    UnexpectedResponse,
    ValidationFailed,
    WalletAPIError,
    WalletConnectionError,
    WalletError,
)
from wallet_client.models import (
    AssetBalance,
    AssetType,
    Balances,
    BatchOperation,
    BatchResult,
    Expiry,
    Health,
    Hold,
    HoldPage,
    LedgerEntry,
    LotMovement,
    Transaction,
    TransactionPage,
    User,
    UserPage,
)

__all__ = [
    "AssetBalance",
    "AssetType",
    "AsyncWalletClient",
    "BadRequest",
    "Balances",
    "BatchOperation",
    "BatchResult",
    "Conflict",
    "Expiry",
    "Forbidden",
    "Health",
    "Hold",
    "HoldPage",
    "IdempotencyKeyInUse",
    "IdempotencyKeyReused",
    "InsufficientFunds",
    "InternalServerError",
    "LedgerEntry",
    "LotMovement",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RetryPolicy",
    "ServiceUnavailable",
    "Transaction",
    "TransactionPage",
    "Unauthorized",
    "UnexpectedResponse",
    "User",
    "UserPage",
    "ValidationFailed",
    "WalletAPIError",
    "WalletClient",
    "WalletConnectionError",
    "WalletError",
    "__version__",
]
