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
    SPEND = "spend"  # spend, and holds (place, capture, void)
    TRANSFER = "transfer"  # move credits between users
    REVERSE = "reverse"  # refund a spend, claw back a top-up or bonus
    REPORT = "report"  # the liability report (finance), without any write
    ADMIN = "admin"  # users, debts (allow_negative), the audit, and everything else


class KeyOperation(StrEnum):
    """The write operations a key may be restricted to (on top of its scopes). A batch is checked
    operation by operation; placing, capturing and voiding a hold are separate operations."""

    TOPUP = "topup"
    BONUS = "bonus"
    SPEND = "spend"
    TRANSFER = "transfer"
    HOLD = "hold"
    CAPTURE = "capture"
    VOID = "void"
    REVERSE = "reverse"


class SystemAccount(StrEnum):
    """The system accounts every asset has, one per purpose, so purchased, granted and spent
    credits are told apart in the books. They carry no cached balance (see the schema)."""

    TREASURY = "SYSTEM_TREASURY"  # source of credits sold (top-ups)
    PROMOTIONS = "SYSTEM_PROMOTIONS"  # source of credits given (bonuses)
    REVENUE = "SYSTEM_REVENUE"  # sink of credits spent, captured, and of transfer fees
    BREAKAGE = "SYSTEM_BREAKAGE"  # sink of credits that expired unspent (breakage)


class TransactionType(StrEnum):
    TOPUP = "topup"
    BONUS = "bonus"
    SPEND = "spend"
    CAPTURE = "capture"
    TRANSFER = "transfer"
    REFUND = "refund"
    CLAWBACK = "clawback"
    EXPIRY = "expiry"


class LotOrigin(StrEnum):
    """Where the credits of a lot came from: paid for (a liability: deferred revenue) or given."""

    PURCHASED = "purchased"
    GRANTED = "granted"


class SpendOrder(StrEnum):
    """Which open lots a debit draws from first, per asset (wallet.settings `lot_policies`).
    Within an origin, and for `expiring_first`, sooner expiry first; lots without expiry last;
    then oldest first."""

    GRANTED_FIRST = "granted_first"  # the default: promotional credits before paid ones
    PURCHASED_FIRST = "purchased_first"
    EXPIRING_FIRST = "expiring_first"  # soonest expiry first whatever the origin
    FIFO = "fifo"  # oldest lot first


@dataclass(frozen=True, slots=True)
class TypeRule:
    user_sign: int  # +1: the transaction's user is credited; -1: debited
    # The other side of the posting; None: that of the transaction it reverses.
    system_account: SystemAccount | None
    scope: Scope  # what the caller needs to post it
    meaning: str
    direct: bool = False  # posted by its own endpoint and in batches (top-up, bonus, spend)
    reversed_by: TransactionType | None = None  # what reverses it, if it can be reversed
    # The origin of the lot a credit of this type creates; None: a debit, or a credit that takes
    # the origins of the lots it mirrors (a refund restores what the spend drew, a transfer
    # passes on what the sender's lots were).
    lot_origin: LotOrigin | None = None


TYPE_RULES: dict[TransactionType, TypeRule] = {
    TransactionType.TOPUP: TypeRule(
        +1, SystemAccount.TREASURY, Scope.CREDIT, "a purchase with real money: credit the user",
        direct=True, reversed_by=TransactionType.CLAWBACK, lot_origin=LotOrigin.PURCHASED,
    ),
    TransactionType.BONUS: TypeRule(
        +1, SystemAccount.PROMOTIONS, Scope.CREDIT, "an incentive: credit the user",
        direct=True, reversed_by=TransactionType.CLAWBACK, lot_origin=LotOrigin.GRANTED,
    ),
    TransactionType.SPEND: TypeRule(
        -1, SystemAccount.REVENUE, Scope.SPEND, "an in-app purchase: debit the user",
        direct=True, reversed_by=TransactionType.REFUND,
    ),
    TransactionType.CAPTURE: TypeRule(
        -1, SystemAccount.REVENUE, Scope.SPEND, "the captured part of a hold: debit the user",
        reversed_by=TransactionType.REFUND,
    ),
    TransactionType.TRANSFER: TypeRule(
        -1, SystemAccount.REVENUE, Scope.TRANSFER,
        "credits from one user to another; a fee, if any, goes to SYSTEM_REVENUE",
    ),
    TransactionType.REFUND: TypeRule(
        +1, SystemAccount.REVENUE, Scope.REVERSE, "reverses a spend or capture: credit the user back"
    ),
    TransactionType.CLAWBACK: TypeRule(
        -1, None, Scope.REVERSE, "reverses a top-up or bonus: debit the user back to its source"
    ),
    TransactionType.EXPIRY: TypeRule(
        -1, SystemAccount.BREAKAGE, Scope.ADMIN,
        "credits whose lot expired unspent leave the user (breakage); posted by `wallet expire`",
    ),
}  # fmt: skip
DIRECT_TYPES = tuple(t for t, rule in TYPE_RULES.items() if rule.direct)
# What a batch may hold: the direct types, and transfers (a trade is two transfers).
BATCH_TYPES = (*DIRECT_TYPES, TransactionType.TRANSFER)


class HoldStatus(StrEnum):
    OPEN = "open"
    CAPTURED = "captured"
    VOIDED = "voided"
    EXPIRED = "expired"  # shown from the moment it expires; released by the database


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
METADATA_MAX_DEPTH = 32  # levels of nested objects and arrays, the top object included
USER_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
ASSET_CODE_MAX_CHARS = 32
ASSET_CODE_PATTERN = r"^[A-Z][A-Z0-9_]{1,31}$"
# A request's id (X-Request-ID, kept on its transactions): 1 to 128 of these characters.
REQUEST_ID_CHARACTERS = "A-Za-z0-9._:@/+=-"  # a regular expression's character class, as written in [...]
REQUEST_ID_MAX_CHARS = 128
# Opaque pagination cursors are short; anything longer was not issued by this service.
CURSOR_MAX_CHARS = 200
# Page sizes may be configured up to this.
PAGE_SIZE_CEILING = 1_000
BATCH_OPERATIONS_CEILING = 1_000
# Ten years: the longest default or explicit expiry of a credit lot. As a number of seconds, ten
# years at their shortest (3,652 days: two leap days), so a duration never goes past ten calendar
# years whenever it starts; an explicit `expires_at` is judged on the calendar (wallet.services.
# transactions). 10 * 366 days, before, let expiries run 7 or 8 days past ten years.
LOT_EXPIRY_SECONDS_CEILING = (10 * 365 + 2) * 24 * 3600
# Sent with every 503: nothing was written, and retrying with the same key after this is safe.
RETRY_AFTER_SECONDS = 1
