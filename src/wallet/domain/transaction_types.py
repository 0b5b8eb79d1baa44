"""The kinds of transaction and the scope a caller needs to post each."""

from __future__ import annotations

from enum import StrEnum


class TransactionType(StrEnum):
    TOPUP = "topup"  # a purchase with real money: credit the user from SYSTEM_TREASURY
    BONUS = "bonus"  # an incentive: credit the user from SYSTEM_PROMOTIONS
    SPEND = "spend"  # an in-app purchase: debit the user into SYSTEM_REVENUE


class Scope(StrEnum):
    READ = "read"
    CREDIT = "credit"  # top-up and bonus
    SPEND = "spend"
    ADMIN = "admin"  # users, and everything else


REQUIRED_SCOPE: dict[TransactionType, Scope] = {
    TransactionType.TOPUP: Scope.CREDIT,
    TransactionType.BONUS: Scope.CREDIT,
    TransactionType.SPEND: Scope.SPEND,
}
