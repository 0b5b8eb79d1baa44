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
"""

from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema
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
from wallet.domain.rules import IDEMPOTENCY_KEY_PATTERN, METADATA_MAX_DEPTH
from wallet.settings import Settings

# The ctx key of a refusal whose message is whole (it does not start with the field's name).
WHOLE_MESSAGE = "whole_message"


def refusal(code: errors.Code, message: str, *, whole: bool = False) -> PydanticCustomError:
    """A validation error with a catalogue code of its own: answered as `code` with the message
    `<field> <message>` (or `message` alone when `whole`), the field named (wallet.api.errors)."""
    return PydanticCustomError(code.code, "{message}", {"message": message, WHOLE_MESSAGE: whole})


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
