"""Response models: frozen dataclasses parsed from the service's JSON documents.

Amounts are `int` (minor units), exactly as the service sends them; a document whose amount is
not a JSON integer is refused (`UnexpectedResponse`) rather than rounded. Timestamps are aware
`datetime`s in UTC. Fields the service adds later are ignored, so an older client keeps working.
Write results carry `replayed`: true when the service answered from the stored outcome of an
earlier request with the same idempotency key (header `Idempotent-Replayed: true`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from wallet_client.errors import UnexpectedResponse

HoldStatus = Literal["open", "captured", "voided", "expired"]
BatchOperationType = Literal["topup", "bonus", "spend", "transfer"]


def _obj(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise UnexpectedResponse(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list):
        raise UnexpectedResponse(f"{key}: expected a JSON array")
    return value


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise UnexpectedResponse(f"{key}: expected a string, got {value!r}")
    return value


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise UnexpectedResponse(f"{key}: expected a string or null, got {value!r}")
    return value


def _int(data: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnexpectedResponse(f"{key}: expected an integer, got {value!r}")
    return value


def _opt_int(data: Mapping[str, Any], key: str) -> int | None:
    return None if data.get(key) is None else _int(data, key)


def _bool(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key)
    if not isinstance(value, bool):
        raise UnexpectedResponse(f"{key}: expected a boolean, got {value!r}")
    return value


def _time(data: Mapping[str, Any], key: str) -> datetime:
    text = _str(data, key)
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise UnexpectedResponse(f"{key}: not an RFC 3339 time: {text!r}") from None


def _opt_time(data: Mapping[str, Any], key: str) -> datetime | None:
    return None if data.get(key) is None else _time(data, key)


def _metadata(data: Mapping[str, Any]) -> dict[str, Any]:
    value = data.get("metadata")
    if value is None:
        return {}
    return dict(_obj(value, "metadata"))


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    account_id: int
    account: str  # a user id, or the system account code
    account_kind: str  # "user" or "system"
    amount: int  # signed: positive increases the account

    @classmethod
    def from_json(cls, value: Any) -> LedgerEntry:
        data = _obj(value, "entry")
        return cls(
            _int(data, "account_id"), _str(data, "account"), _str(data, "account_kind"), _int(data, "amount")
        )


@dataclass(frozen=True, slots=True)
class LotMovement:
    lot_id: int
    origin: str  # "purchased" or "granted"
    expires_at: datetime | None
    amount: int  # signed: positive fills the lot, negative draws from it

    @classmethod
    def from_json(cls, value: Any) -> LotMovement:
        data = _obj(value, "lot")
        return cls(
            _int(data, "lot_id"), _str(data, "origin"), _opt_time(data, "expires_at"), _int(data, "amount")
        )


@dataclass(frozen=True, slots=True)
class Transaction:
    id: str
    type: str  # topup, bonus, spend, capture, transfer, refund, clawback
    status: str
    user_id: str
    asset_type: str
    amount: int
    balance_after: int  # the user's balance in this asset right after it
    description: str | None
    metadata: dict[str, Any]
    idempotency_key: str
    created_at: datetime
    entries: tuple[LedgerEntry, ...]
    reverses: str | None = None  # refund/clawback: the transaction it reverses
    reversed_amount: int = 0  # how much of this one was reversed so far
    counterparty_user_id: str | None = None  # transfer: the receiver
    counterparty_balance_after: int | None = None
    fee: int = 0  # transfer: paid by the sender on top of amount
    hold_id: str | None = None  # capture: the hold it captured
    lots: tuple[LotMovement, ...] = ()  # the credit lots it filled or drew, in order
    replayed: bool = field(default=False, compare=False)  # answered from a stored earlier outcome

    @classmethod
    def from_json(cls, value: Any, *, replayed: bool = False) -> Transaction:
        data = _obj(value, "transaction")
        return cls(
            id=_str(data, "id"),
            type=_str(data, "type"),
            status=_str(data, "status"),
            user_id=_str(data, "user_id"),
            asset_type=_str(data, "asset_type"),
            amount=_int(data, "amount"),
            balance_after=_int(data, "balance_after"),
            description=_opt_str(data, "description"),
            metadata=_metadata(data),
            idempotency_key=_str(data, "idempotency_key"),
            created_at=_time(data, "created_at"),
            entries=tuple(LedgerEntry.from_json(e) for e in _list(data, "entries")),
            reverses=_opt_str(data, "reverses"),
            reversed_amount=_int(data, "reversed_amount", 0),
            counterparty_user_id=_opt_str(data, "counterparty_user_id"),
            counterparty_balance_after=_opt_int(data, "counterparty_balance_after"),
            fee=_int(data, "fee", 0),
            hold_id=_opt_str(data, "hold_id"),
            lots=tuple(LotMovement.from_json(m) for m in data.get("lots") or ()),
            replayed=replayed,
        )


@dataclass(frozen=True, slots=True)
class BatchResult:
    transactions: tuple[Transaction, ...]  # in the order of the operations
    replayed: bool = field(default=False, compare=False)

    @classmethod
    def from_json(cls, value: Any, *, replayed: bool = False) -> BatchResult:
        data = _obj(value, "batch")
        return cls(
            tuple(Transaction.from_json(t, replayed=replayed) for t in _list(data, "transactions")), replayed
        )


@dataclass(frozen=True, slots=True)
class TransactionPage:
    data: tuple[Transaction, ...]  # newest first
    next_cursor: str | None  # pass as `cursor` for the next page; None on the last page

    @classmethod
    def from_json(cls, value: Any) -> TransactionPage:
        data = _obj(value, "page")
        return cls(
            tuple(Transaction.from_json(t) for t in _list(data, "data")), _opt_str(data, "next_cursor")
        )


@dataclass(frozen=True, slots=True)
class Expiry:
    amount: int
    at: datetime

    @classmethod
    def from_json(cls, value: Any) -> Expiry:
        data = _obj(value, "next_expiry")
        return cls(_int(data, "amount"), _time(data, "at"))


@dataclass(frozen=True, slots=True)
class AssetBalance:
    asset_type: str
    name: str
    scale: int  # decimal places for display; amounts are in minor units
    balance: int  # posted
    held: int  # reserved by open, unexpired holds
    available: int  # balance - held: what spends, holds and transfers may use
    debt: int  # how far below zero the balance is
    purchased: int = 0  # the part of balance paid for; purchased + granted = balance
    granted: int = 0  # the part given (bonuses)
    next_expiry: Expiry | None = None  # the credits that expire next, if any

    @classmethod
    def from_json(cls, value: Any) -> AssetBalance:
        data = _obj(value, "balance")
        return cls(
            asset_type=_str(data, "asset_type"),
            name=_str(data, "name"),
            scale=_int(data, "scale"),
            balance=_int(data, "balance"),
            held=_int(data, "held"),
            available=_int(data, "available"),
            debt=_int(data, "debt", 0),
            purchased=_int(data, "purchased", 0),
            granted=_int(data, "granted", 0),
            next_expiry=None if data.get("next_expiry") is None else Expiry.from_json(data["next_expiry"]),
        )


@dataclass(frozen=True, slots=True)
class Balances:
    user_id: str
    as_of: datetime | None  # the instant asked for, or None for now
    balances: tuple[AssetBalance, ...]

    def __getitem__(self, asset_type: str) -> AssetBalance:
        for balance in self.balances:
            if balance.asset_type == asset_type:
                return balance
        raise KeyError(asset_type)

    def __contains__(self, asset_type: object) -> bool:
        return any(balance.asset_type == asset_type for balance in self.balances)

    @classmethod
    def from_json(cls, value: Any) -> Balances:
        data = _obj(value, "balances")
        return cls(
            _str(data, "user_id"),
            _opt_time(data, "as_of"),
            tuple(AssetBalance.from_json(b) for b in _list(data, "balances")),
        )


@dataclass(frozen=True, slots=True)
class Hold:
    id: str
    user_id: str
    asset_type: str
    amount: int
    status: str  # see HoldStatus
    captured_amount: int | None
    capture_transaction_id: str | None
    description: str | None
    metadata: dict[str, Any]
    idempotency_key: str
    created_at: datetime
    expires_at: datetime
    closed_at: datetime | None
    replayed: bool = field(default=False, compare=False)

    @classmethod
    def from_json(cls, value: Any, *, replayed: bool = False) -> Hold:
        data = _obj(value, "hold")
        return cls(
            id=_str(data, "id"),
            user_id=_str(data, "user_id"),
            asset_type=_str(data, "asset_type"),
            amount=_int(data, "amount"),
            status=_str(data, "status"),
            captured_amount=_opt_int(data, "captured_amount"),
            capture_transaction_id=_opt_str(data, "capture_transaction_id"),
            description=_opt_str(data, "description"),
            metadata=_metadata(data),
            idempotency_key=_str(data, "idempotency_key"),
            created_at=_time(data, "created_at"),
            expires_at=_time(data, "expires_at"),
            closed_at=_opt_time(data, "closed_at"),
            replayed=replayed,
        )


@dataclass(frozen=True, slots=True)
class HoldPage:
    data: tuple[Hold, ...]  # newest first
    next_cursor: str | None

    @classmethod
    def from_json(cls, value: Any) -> HoldPage:
        data = _obj(value, "page")
        return cls(tuple(Hold.from_json(h) for h in _list(data, "data")), _opt_str(data, "next_cursor"))


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    name: str
    created_at: datetime
    created: bool = field(default=False, compare=False)  # create_user: False if it already existed

    @classmethod
    def from_json(cls, value: Any, *, created: bool = False) -> User:
        data = _obj(value, "user")
        return cls(_str(data, "user_id"), _str(data, "name"), _time(data, "created_at"), created)


@dataclass(frozen=True, slots=True)
class UserPage:
    data: tuple[User, ...]
    next_cursor: str | None

    @classmethod
    def from_json(cls, value: Any) -> UserPage:
        data = _obj(value, "page")
        return cls(tuple(User.from_json(u) for u in _list(data, "data")), _opt_str(data, "next_cursor"))


@dataclass(frozen=True, slots=True)
class AssetType:
    code: str
    name: str
    scale: int
    is_active: bool

    @classmethod
    def from_json(cls, value: Any) -> AssetType:
        data = _obj(value, "asset type")
        return cls(_str(data, "code"), _str(data, "name"), _int(data, "scale"), _bool(data, "is_active"))


@dataclass(frozen=True, slots=True)
class Health:
    status: str  # "ok" or "degraded"
    database: str  # "ok" or "unavailable"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_json(cls, value: Any) -> Health:
        data = _obj(value, "health")
        return cls(_str(data, "status"), _str(data, "database"))


@dataclass(frozen=True, slots=True)
class BatchOperation:
    """One operation of `batch()`. Build with the class methods: `BatchOperation.topup(...)`."""

    type: BatchOperationType
    user_id: str  # for a transfer, the sender
    asset_type: str
    amount: int
    to_user_id: str | None = None  # transfers only: the receiver
    fee: int = 0  # transfers only
    description: str | None = None
    metadata: Mapping[str, Any] | None = None

    @classmethod
    def topup(
        cls,
        user_id: str,
        asset_type: str,
        amount: int,
        *,
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> BatchOperation:
        return cls("topup", user_id, asset_type, amount, description=description, metadata=metadata)

    @classmethod
    def bonus(
        cls,
        user_id: str,
        asset_type: str,
        amount: int,
        *,
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> BatchOperation:
        return cls("bonus", user_id, asset_type, amount, description=description, metadata=metadata)

    @classmethod
    def spend(
        cls,
        user_id: str,
        asset_type: str,
        amount: int,
        *,
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> BatchOperation:
        return cls("spend", user_id, asset_type, amount, description=description, metadata=metadata)

    @classmethod
    def transfer(
        cls,
        from_user_id: str,
        to_user_id: str,
        asset_type: str,
        amount: int,
        *,
        fee: int = 0,
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> BatchOperation:
        return cls(
            "transfer",
            from_user_id,
            asset_type,
            amount,
            to_user_id=to_user_id,
            fee=fee,
            description=description,
            metadata=metadata,
        )
