"""The request bodies of writes, built from the Settings at start-up: each configured limit
(WALLET_MAX_AMOUNT_MINOR, _DESCRIPTION_CHARS, _METADATA_BYTES, _IDEMPOTENCY_KEY_CHARS,
_BATCH_OPERATIONS, _HOLD_EXPIRES_IN_SECONDS_MAX) is a constraint of its field, enforced by pydantic
when the body is read and shown by the OpenAPI document generated from the same model. So a
command that reaches a service is valid, and there is no second check of these limits (the
database's constraints stay, as the last line, at the hard ceilings of `wallet.domain.rules`).

A field over a configured limit is refused with the catalogue code the limit has always had
(422 `limit_exceeded`, or `invalid_request` for what PostgreSQL cannot store), naming the field:
see `refusal` and `wallet.api.errors`. The classes keep their names: they are the OpenAPI
document's component names.

The rules between the fields of one body are here too, as model validators (`_expiry_rules`,
`_batch_operation_rules`, `TransferBody._two_users`): only a bonus expires, in one way, at most
ten years ahead; a transfer names a receiver other than its sender; only a transfer takes a
receiver or a fee. They run once every field is valid on its own, and are refused with the code,
message and field the services used to answer them with (`refusal(..., field=...)` names the
member the rule is about), so the services get commands that are valid as a whole. What needs the
database (balances, users and assets that exist, whether `expires_at` is still in the future once
the idempotency key has found no earlier answer) stays with the database functions.
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Self

import orjson
from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from wallet.api.schemas import (
    AssetCode,
    BatchType,
    ExpiresAt,
    ExpiresInSeconds,
    JsonBool,
    RequestBody,
    UserId,
    json_integer,
    not_null,
    whole_number,
)
from wallet.domain import errors
from wallet.domain.metadata import contains_nul, depth, metadata_json
from wallet.domain.rules import IDEMPOTENCY_KEY_PATTERN, METADATA_MAX_DEPTH, TransactionType
from wallet.domain.times import ten_years_after
from wallet.settings import Settings

# The ctx key of a refusal whose message is whole (it does not start with the field's name).
WHOLE_MESSAGE = "whole_message"
# The ctx key of a model's refusal that is about one of its members: the field it names.
MEMBER = "member"


def refusal(
    code: errors.Code, message: str, *, whole: bool = False, member: str | None = None
) -> PydanticCustomError:
    """A validation error with a catalogue code of its own: answered as `code` with the message
    `<field> <message>` (or `message` alone when `whole`), the field named (wallet.api.errors).
    Raised by a model validator, `member` is the field of that model it names."""
    context: dict[str, Any] = {"message": message, WHOLE_MESSAGE: whole}
    if member is not None:
        context[MEMBER] = member
    return PydanticCustomError(code.code, "{message}", context)


def _expiry_rules(type: TransactionType, expires_at: datetime | None, expires_in_seconds: int | None) -> None:
    """Only a bonus carries an expiry, given one way, at most ten years ahead (in this order: the
    first broken is the one answered). Whether `expires_at` is still in the future is judged by
    the database after the idempotency key, so that a retry gets what was stored."""
    if expires_at is None and expires_in_seconds is None:
        return
    given = "expires_at" if expires_at is not None else "expires_in_seconds"
    if type is not TransactionType.BONUS:
        raise refusal(
            errors.VALIDATION_ERROR, f"only a bonus expires, not a {type}", whole=True, member=given
        )
    if expires_at is not None and expires_in_seconds is not None:
        raise refusal(
            errors.VALIDATION_ERROR,
            "give expires_at or expires_in_seconds, not both",
            whole=True,
            member="expires_in_seconds",
        )
    if expires_at is not None and expires_at > ten_years_after(datetime.now(UTC)):
        raise refusal(
            errors.VALIDATION_ERROR, "must be at most 10 years ahead", whole=True, member="expires_at"
        )


def _batch_operation_rules(op: Any) -> None:
    """An operation of a batch: its expiry as a bonus's; a transfer names a receiver other than its
    sender; only a transfer takes a receiver or a fee (a fee of 0 is no fee)."""
    _expiry_rules(op.type, op.expires_at, op.expires_in_seconds)
    if op.type is TransactionType.TRANSFER:
        if op.to_user_id is None:
            raise refusal(
                errors.VALIDATION_ERROR, "a transfer needs to_user_id", whole=True, member="to_user_id"
            )
        if op.to_user_id == op.user_id:
            raise refusal(
                errors.SAME_USER, "user_id and to_user_id must differ", whole=True, member="to_user_id"
            )
    elif op.to_user_id is not None or op.fee:
        raise refusal(
            errors.VALIDATION_ERROR,
            f"only a transfer takes to_user_id and fee, not a {op.type}",
            whole=True,
            member="to_user_id" if op.to_user_id is not None else "fee",
        )


def _at_most(limit: int, unit: str = "") -> AfterValidator:
    def check(value: int) -> int:
        if value > limit:
            raise refusal(errors.LIMIT_EXCEEDED, f"must not exceed {limit}{unit}")
        return value

    return AfterValidator(check)


def _text(max_chars: int) -> AfterValidator:
    """A description or reason: at most WALLET_MAX_DESCRIPTION_CHARS, no NUL (PostgreSQL text)."""

    def check(text: str) -> str:
        if len(text) > max_chars:
            raise refusal(errors.LIMIT_EXCEEDED, f"must not exceed {max_chars} characters")
        if "\x00" in text:
            raise refusal(errors.INVALID_REQUEST, "must not contain NUL characters")
        return text

    return AfterValidator(check)


def _metadata(max_bytes: int) -> AfterValidator:
    """Free-form JSON that PostgreSQL can store and give back as the same JSON, within
    WALLET_MAX_METADATA_BYTES as stored."""

    def check(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
        if contains_nul(metadata):
            raise refusal(errors.INVALID_REQUEST, "must not contain NUL characters")
        if depth(metadata) > METADATA_MAX_DEPTH:
            raise refusal(errors.LIMIT_EXCEEDED, f"must not nest deeper than {METADATA_MAX_DEPTH} levels")
        try:
            size = len(metadata_json(metadata).encode())
        except orjson.JSONEncodeError as exc:
            raise refusal(errors.INVALID_REQUEST, f"cannot be stored as JSON: {exc}") from None
        if size > max_bytes:
            raise refusal(errors.LIMIT_EXCEEDED, f"must not exceed {max_bytes} bytes as JSON")
        return metadata

    return AfterValidator(check)


def _batch_size(max_operations: int) -> AfterValidator:
    def check(operations: list[Any]) -> list[Any]:
        if len(operations) > max_operations:
            raise refusal(
                errors.LIMIT_EXCEEDED, f"a batch holds 1 to {max_operations} operations", whole=True
            )
        return operations

    return AfterValidator(check)


@dataclass(frozen=True, slots=True)
class WriteBodies:
    """The request model of each write, for one configuration."""

    PostingBody: type[RequestBody]
    BonusBody: type[RequestBody]
    BatchOperation: type[RequestBody]
    BatchBody: type[RequestBody]
    TransferBody: type[RequestBody]
    ReverseBody: type[RequestBody]
    HoldBody: type[RequestBody]
    CaptureBody: type[RequestBody]
    VoidBody: type[RequestBody]


def write_bodies(settings: Settings) -> WriteBodies:
    """The models for `settings`' limits (called once per application, at start-up)."""
    amount_schema = {"type": "integer", "exclusiveMinimum": 0, "maximum": settings.max_amount_minor}
    Amount = Annotated[
        int,
        BeforeValidator(whole_number),
        Field(gt=0, description="Integer amount in the asset's minor unit."),
        _at_most(settings.max_amount_minor, " (minor units)"),
        WithJsonSchema(amount_schema),
    ]
    Fee = Annotated[
        int,
        BeforeValidator(whole_number),
        Field(ge=0, description="Integer fee in minor units; 0 for none."),
        _at_most(settings.max_amount_minor, " (minor units)"),
        WithJsonSchema({"type": "integer", "minimum": 0, "maximum": settings.max_amount_minor}),
    ]
    # An amount that may be left out (meaning all of what is left) but not sent as null.
    OptionalAmount = Annotated[
        Annotated[
            int,
            BeforeValidator(whole_number),
            Field(gt=0),
            _at_most(settings.max_amount_minor, " (minor units)"),
        ]
        | None,
        BeforeValidator(not_null),
        WithJsonSchema(amount_schema),
    ]
    Text = Annotated[
        str,
        _text(settings.max_description_chars),
        WithJsonSchema({"type": "string", "maxLength": settings.max_description_chars}),
    ]
    Metadata = Annotated[dict[str, Any] | None, _metadata(settings.max_metadata_bytes)]
    key_chars = settings.max_idempotency_key_chars
    IdempotencyKeyText = Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=key_chars,
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="Or send the Idempotency-Key header. Required one way or the other.",
        ),
    ]
    HoldExpiresIn = Annotated[
        int,
        BeforeValidator(json_integer),
        Field(gt=0),
        _at_most(settings.hold_expires_in_seconds_max),
        WithJsonSchema(
            {"type": "integer", "exclusiveMinimum": 0, "maximum": settings.hold_expires_in_seconds_max}
        ),
    ]

    class PostingBody(RequestBody):
        user_id: UserId
        asset_type: AssetCode
        amount: Amount
        idempotency_key: IdempotencyKeyText = None
        description: Text | None = None
        metadata: Metadata = Field(
            default=None, description="Free-form JSON object, size-limited (WALLET_MAX_METADATA_BYTES)."
        )

    class BonusBody(PostingBody):
        """A bonus may carry its own expiry (one of the two fields); without one the asset's default
        applies (WALLET_LOT_POLICIES)."""

        expires_at: ExpiresAt | None = None
        expires_in_seconds: ExpiresInSeconds | None = None

        @model_validator(mode="after")
        def _one_expiry(self) -> Self:
            _expiry_rules(TransactionType.BONUS, self.expires_at, self.expires_in_seconds)
            return self

    class BatchOperation(RequestBody):
        type: BatchType
        user_id: UserId = Field(description="The user of the operation; for a transfer, the sender.")
        asset_type: AssetCode
        amount: Amount
        to_user_id: UserId | None = Field(default=None, description="Transfers only: the receiver.")
        fee: Fee = Field(default=0, description="Transfers only: paid by the sender to SYSTEM_REVENUE.")
        description: Text | None = None
        metadata: Metadata = None
        expires_at: ExpiresAt | None = Field(
            default=None, description="Bonuses only: see the bonus endpoint."
        )
        expires_in_seconds: ExpiresInSeconds | None = Field(
            default=None, description="Bonuses only: see the bonus endpoint."
        )

        @model_validator(mode="after")
        def _rules_of_its_type(self) -> Self:
            _batch_operation_rules(self)
            return self

    class BatchBody(RequestBody):
        operations: Annotated[
            list[BatchOperation],
            _batch_size(settings.max_batch_operations),
            Field(json_schema_extra={"maxItems": settings.max_batch_operations}),
        ] = Field(
            min_length=1, description="Posted in order, all or none; at most WALLET_MAX_BATCH_OPERATIONS."
        )
        idempotency_key: Annotated[
            str | None, Field(min_length=1, max_length=key_chars, pattern=IDEMPOTENCY_KEY_PATTERN)
        ] = None

    class TransferBody(RequestBody):
        from_user_id: UserId
        to_user_id: UserId
        asset_type: AssetCode
        amount: Amount
        fee: Fee = Field(default=0, description="Paid by the sender to SYSTEM_REVENUE, on top of amount.")
        idempotency_key: IdempotencyKeyText = None
        description: Text | None = None
        metadata: Metadata = None

        @model_validator(mode="after")
        def _two_users(self) -> Self:
            if self.from_user_id == self.to_user_id:
                raise refusal(
                    errors.SAME_USER,
                    "from_user_id and to_user_id must differ",
                    whole=True,
                    member="to_user_id",
                )
            return self

    class ReverseBody(RequestBody):
        amount: OptionalAmount = Field(
            default=None,
            description=(
                "Default (left out): all it may take: for a refund, all of the spend not yet refunded; "
                "for a clawback, what is left of the original's credits, unspent and unexpired (with "
                "`allow_negative`, also the spent part). Not null."
            ),
        )
        reason: Text | None = None
        metadata: Metadata = None
        allow_negative: JsonBool = Field(
            default=False, description="Clawbacks only, admin scope: let the balance go below zero (a debt)."
        )
        idempotency_key: IdempotencyKeyText = None

    class HoldBody(RequestBody):
        user_id: UserId
        asset_type: AssetCode
        amount: Amount
        expires_in_seconds: HoldExpiresIn | None = Field(
            default=None, description="Default WALLET_HOLD_EXPIRES_IN_SECONDS_DEFAULT, at most ..._MAX."
        )
        idempotency_key: IdempotencyKeyText = None
        description: Text | None = None
        metadata: Metadata = None

    class CaptureBody(RequestBody):
        amount: OptionalAmount = Field(
            default=None, description="Default (left out): all of the hold; the rest is released. Not null."
        )
        idempotency_key: IdempotencyKeyText = None
        description: Text | None = None
        metadata: Metadata = None

    class VoidBody(RequestBody):
        idempotency_key: IdempotencyKeyText = None

    return WriteBodies(
        PostingBody=PostingBody,
        BonusBody=BonusBody,
        BatchOperation=BatchOperation,
        BatchBody=BatchBody,
        TransferBody=TransferBody,
        ReverseBody=ReverseBody,
        HoldBody=HoldBody,
        CaptureBody=CaptureBody,
        VoidBody=VoidBody,
    )
