"""The ledger's rules, each defined once: kinds of transaction (the sign of each for the user, the
system account on the other side, the scope a caller needs), the scopes, and the hard limits.

Python reads these directly; PostgreSQL reads them through functions generated from this module
(`wallet.db.rules`) and re-installed by every `wallet migrate`, so the posting functions, the
CHECK constraints and the HTTP layer cannot disagree. A test compares the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Scope(StrEnum):
    """What an API key may do. `admin` includes every other scope."""

    READ = "read"
    CREDIT = "credit"  # top-up and bonus
    SPEND = "spend"
    ADMIN = "admin"  # users, and everything else


class SystemAccount(StrEnum):
    """The system accounts every asset has, one per purpose, so purchased, granted and spent
    credits are told apart in the books. They carry no cached balance (see the schema)."""

    TREASURY = "SYSTEM_TREASURY"  # source of credits sold (top-ups)
    PROMOTIONS = "SYSTEM_PROMOTIONS"  # source of credits given (bonuses)
    REVENUE = "SYSTEM_REVENUE"  # sink of credits spent


class TransactionType(StrEnum):
    TOPUP = "topup"
    BONUS = "bonus"
    SPEND = "spend"


@dataclass(frozen=True, slots=True)
class TypeRule:
    user_sign: int  # +1: the user's account is credited; -1: debited
    system_account: SystemAccount  # the other side of the posting
    scope: Scope  # what the caller needs to post it
    meaning: str


TYPE_RULES: dict[TransactionType, TypeRule] = {
    TransactionType.TOPUP: TypeRule(
        +1, SystemAccount.TREASURY, Scope.CREDIT, "a purchase with real money: credit the user"
    ),
    TransactionType.BONUS: TypeRule(
        +1, SystemAccount.PROMOTIONS, Scope.CREDIT, "an incentive: credit the user"
    ),
    TransactionType.SPEND: TypeRule(
        -1, SystemAccount.REVENUE, Scope.SPEND, "an in-app purchase: debit the user"
    ),
}


def scope_allows(granted: frozenset[Scope], needed: Scope) -> bool:
    return needed in granted or Scope.ADMIN in granted


# Hard limits: the widest any setting may be configured. The configured limits (WALLET_MAX_*,
# wallet.settings) are tighter and are what callers meet; the database enforces these.
# A bigint holds 9.2e18; amounts stay far below so a balance can absorb ~9e12 maximal credits.
AMOUNT_MINOR_CEILING = 10**15
IDEMPOTENCY_KEY_MAX_CHARS = 255
# Printable ASCII without spaces: keys travel in headers and logs.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]+$"
DESCRIPTION_MAX_CHARS = 10_000
METADATA_MAX_BYTES = 65_536
USER_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
ASSET_CODE_MAX_CHARS = 32
ASSET_CODE_PATTERN = r"^[A-Z][A-Z0-9_]{1,31}$"
# Opaque pagination cursors are short; anything longer was not issued by this service.
CURSOR_MAX_CHARS = 200
# Page sizes may be configured up to this.
PAGE_SIZE_CEILING = 1_000
BATCH_OPERATIONS_CEILING = 1_000
# Sent with every 503: nothing was written, and retrying with the same key after this is safe.
RETRY_AFTER_SECONDS = 1
