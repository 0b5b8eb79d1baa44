"""Request and response models: the HTTP contract, and the OpenAPI document generated from it.
The bodies of writes, which carry configured limits, are built from the settings by
`wallet.api.write_bodies` out of the types and validators here.

Amounts are integers in the asset's minor unit, sent as JSON integers (`100`); a number with a
fraction or an exponent (`100.0`, `1e2`, `1.5`), booleans and strings are rejected, so no binary
float ever reaches the ledger.

Every request body is a JSON object (`RequestBody`): `null`, an array, a string or a number is
refused, naming what was sent. Types are strict: other integers take only JSON integers, booleans
only `true`/`false`, times only strings; pydantic's lax conversions (`"60"` or `true` for 60,
`"yes"`, `"on"` or `1` for true, a number for a time) are not applied. Pydantic's strict mode is
not used as such: on Python objects it would refuse the strings that times and enums arrive as.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from wallet.domain.errors import error_codes
from wallet.domain.rules import (
    ASSET_CODE_PATTERN,
    BATCH_TYPES,
    LOT_EXPIRY_SECONDS_CEILING,
    USER_ID_PATTERN,
    HoldStatus,
    LotOrigin,
    SystemAccount,
    TransactionType,
)
from wallet.domain.times import parse_time


def json_kind(value: Any) -> str:
    """What a parsed JSON value is, for error messages: `null`, `a string`, `the number 1.5`..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "the boolean " + ("true" if value else "false")
    if isinstance(value, (int, float, Decimal)):
        text = str(value)
        return f"the number {text if len(text) <= 24 else text[:20] + '...'}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, bytes):
        return "a body that is not JSON"
    return "a value of another kind"


def _refuse(kind: str, expected: str, value: Any) -> PydanticCustomError:
    return PydanticCustomError(
        kind, "must be {expected}, not {given}", {"expected": expected, "given": json_kind(value)}
    )


def _integer(value: Any, expected: str) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _refuse("json_integer", expected, value)


def json_integer(value: Any) -> Any:
    """A JSON integer only: not `true`, `"60"`, `60.0` or `6e1` (which pydantic would convert)."""
    return _integer(value, "a JSON integer")


def json_boolean(value: Any) -> Any:
    """`true` or `false` only: not `1`, `"yes"`, `"on"` or `"true"` (which pydantic would convert)."""
    if isinstance(value, bool):
        return value
    raise _refuse("json_boolean", "true or false", value)


def _time_string(value: Any) -> Any:
    """A time is an RFC 3339 string with an offset, read by the API's one parser of times
    (`wallet.domain.times.parse_time`, as the times of queries are): not a number (pydantic would
    read it as Unix time), nor a string of one, nor an instant outside the range the API writes."""
    if not isinstance(value, str):
        raise _refuse("json_time", "an RFC 3339 time string with an offset", value)
    try:
        return parse_time(value)
    except ValueError as exc:
        raise PydanticCustomError("json_time", "{reason}", {"reason": str(exc)}) from None


def not_null(value: Any) -> Any:
    """For an optional amount whose absence means "all": `null` is not absence."""
    if value is None:
        raise PydanticCustomError(
            "json_integer",
            "must be a positive integer; leave the field out to mean all, null is not accepted",
        )
    return value


def whole_number(value: Any) -> Any:
    """Amounts are JSON integers of minor units, judged on the exact JSON text: bodies are parsed
    with `Decimal` for every number with a fraction or exponent (wallet.api.json_body), so
    `100.0`, `1e2` and `1.99999999999999999` are refused (not rounded), as `"100"` and `true` are."""
    if isinstance(value, (float, Decimal)):
        raise PydanticCustomError(
            "json_integer",
            "must be a JSON integer of minor units, written without a fraction or exponent; not {given}",
            {"given": json_kind(value)},
        )
    return _integer(value, "a JSON integer of minor units")


JsonBool = Annotated[bool, BeforeValidator(json_boolean)]
UserId = Annotated[str, Field(pattern=USER_ID_PATTERN, examples=["user_001"])]
AssetCode = Annotated[str, Field(pattern=ASSET_CODE_PATTERN, examples=["GOLD_COINS"])]


class RequestBody(BaseModel):
    """Every request body (and object within one): a JSON object with the documented members
    only. Anything else, including a body that is not JSON at all (`MalformedBody`, or the raw
    bytes of a body sent as another content type), is refused here rather than read for its
    attributes, which would make an all-optional model out of nothing."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _json_object(cls, data: Any) -> Any:
        if isinstance(data, (dict, cls)):
            return data
        raise _refuse("json_object", "a JSON object", data)


ExpiresInSeconds = Annotated[
    int,
    BeforeValidator(json_integer),
    Field(
        ge=1,
        le=LOT_EXPIRY_SECONDS_CEILING,
        description="The credits expire this many seconds after posting: at most 3,652 days (10 years).",
    ),
]
ExpiresAt = Annotated[
    AwareDatetime,
    BeforeValidator(_time_string),
    Field(
        description="When the credits expire (RFC 3339 with a zone), at least 1 s and at most 10 years ahead."
    ),
]


def _batchable(value: TransactionType) -> TransactionType:
    if value not in BATCH_TYPES:
        raise ValueError(f"must be one of {', '.join(BATCH_TYPES)}")
    return value


BatchType = Annotated[
    TransactionType,
    AfterValidator(_batchable),
    WithJsonSchema({"type": "string", "enum": [t.value for t in BATCH_TYPES]}),
]


class LedgerEntryOut(BaseModel):
    account_id: int
    account: str = Field(description="User id, or the system account code.")
    account_kind: str = Field(description="'user' or 'system'.")
    amount: int = Field(description="Signed: positive increases the account.")


class LotMovementOut(BaseModel):
    lot_id: int
    origin: LotOrigin = Field(description="purchased or granted.")
    expires_at: str | None
    amount: int = Field(description="Signed: positive fills the lot, negative draws from it.")


class TransactionOut(BaseModel):
    id: str
    type: TransactionType
    status: str
    user_id: str
    asset_type: str
    amount: int
    balance_after: int = Field(description="The user's balance in this asset right after it.")
    description: str | None
    metadata: dict[str, Any]
    idempotency_key: str
    created_at: str
    entries: list[LedgerEntryOut]
    reverses: str | None = Field(default=None, description="refund/clawback: the transaction it reverses.")
    reversed_amount: int = Field(default=0, description="How much of this transaction was reversed so far.")
    counterparty_user_id: str | None = Field(default=None, description="transfer: the receiving user.")
    counterparty_balance_after: int | None = Field(
        default=None, description="transfer: the receiver's balance right after it."
    )
    fee: int = Field(
        default=0, description="transfer: paid by the sender to SYSTEM_REVENUE on top of amount."
    )
    hold_id: str | None = Field(default=None, description="capture: the hold it captured.")
    lots: list[LotMovementOut] = Field(
        default_factory=list,
        description="The credit lots this transaction filled (positive) or drew from (negative), in order.",
    )


class BatchOut(BaseModel):
    transactions: list[TransactionOut]


class TransactionPage(BaseModel):
    data: list[TransactionOut]
    next_cursor: str | None


class ExpiryOut(BaseModel):
    amount: int
    at: str


class AssetBalanceOut(BaseModel):
    asset_type: str
    name: str
    scale: int = Field(description="Decimal places for display; amounts are in minor units.")
    balance: int = Field(description="Posted balance; negative only after an admin-allowed clawback.")
    held: int = Field(description="Reserved by open, unexpired holds.")
    available: int = Field(description="balance - held: what spends, holds and transfers may use.")
    debt: int = Field(description="How far below zero the balance is (repaid first by the next credits).")
    purchased: int = Field(
        description="The part of balance that was paid for (top-ups, and what refunds and transfers"
        " carried of it). purchased + granted = balance; in debt, purchased is the negative balance."
    )
    granted: int = Field(description="The part of balance that was given (bonuses), not paid for.")
    next_expiry: ExpiryOut | None = Field(
        description="The credits that expire next and when; null when none will (or for an as_of answer)."
    )


class BalancesOut(BaseModel):
    user_id: str
    as_of: str | None = Field(default=None, description="The instant asked for, or null for now.")
    balances: list[AssetBalanceOut]


def _not_reserved(user_id: str) -> str:
    if set(user_id) == {"."}:
        raise ValueError("must not be only dots (it would read as a path)")
    if user_id in {s.value for s in SystemAccount}:
        raise ValueError("is the code of a system account")
    return user_id


def _not_blank(name: str) -> str:
    if not name.strip():
        raise PydanticCustomError("blank", "must not be empty or only spaces")
    if "\x00" in name:  # PostgreSQL text cannot hold it
        raise PydanticCustomError("nul", "must not contain NUL characters")
    return name


class UserCreate(RequestBody):
    user_id: Annotated[UserId, AfterValidator(_not_reserved)]
    name: Annotated[str, AfterValidator(_not_blank)] = Field(
        min_length=1, max_length=200, description="Not only spaces."
    )


class UserOut(BaseModel):
    user_id: str
    name: str
    created_at: str


class UserPage(BaseModel):
    data: list[UserOut]
    next_cursor: str | None


class AssetTypeOut(BaseModel):
    code: str
    name: str
    scale: int
    is_active: bool


class AssetTypeList(BaseModel):
    data: list[AssetTypeOut]


class HealthOut(BaseModel):
    status: str
    database: str
    version: str = Field(description="The version of the service answering (CHANGELOG.md).")


class ErrorDetail(BaseModel):
    code: str = Field(json_schema_extra={"enum": [*error_codes()]}, description="From the error catalogue.")
    message: str
    field: str | None


class ErrorOut(BaseModel):
    error: ErrorDetail


class HoldOut(BaseModel):
    id: str
    user_id: str
    asset_type: str
    amount: int
    status: HoldStatus
    captured_amount: int | None
    capture_transaction_id: str | None
    description: str | None
    metadata: dict[str, Any]
    idempotency_key: str
    created_at: str
    expires_at: str
    closed_at: str | None


class HoldPage(BaseModel):
    data: list[HoldOut]
    next_cursor: str | None
