"""Request and response models of the event feed and of webhooks (see wallet.services.events and
wallet.services.webhooks)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AnyUrl, BaseModel, Field, UrlConstraints
from pydantic_core import PydanticCustomError

from wallet.api.schemas import JsonBool, RequestBody
from wallet.api.write_bodies import refusal
from wallet.domain import errors
from wallet.services.events import EventType
from wallet.services.webhooks import URL_MAX_CHARS


def _stored_length(url: AnyUrl) -> AnyUrl:
    """The URL as stored and called is the normalised one (a host in punycode, `/` for an empty
    path), which may be longer than what was sent: it is the one bounded."""
    if len(str(url)) > URL_MAX_CHARS:
        raise refusal(errors.LIMIT_EXCEEDED, f"must not exceed {URL_MAX_CHARS} characters")
    return url


WebhookUrl = Annotated[
    AnyUrl,
    UrlConstraints(max_length=URL_MAX_CHARS, allowed_schemes=["http", "https"]),
    AfterValidator(_stored_length),
    Field(examples=["https://example.com/wallet-events"]),
]


class EventOut(BaseModel):
    id: int = Field(
        description="Unique; receivers dedupe on it. Not the order: the feed's order is its cursor's."
    )
    type: EventType
    created_at: str = Field(description="When the writing transaction started (UTC).")
    cursor: str = Field(description="The position right after this event: pass it as `after`.")
    payload: dict[str, Any] = Field(
        description="transaction.posted: the transaction document without `entries` and"
        " `reversed_amount`; hold.*: the hold document after the change."
    )


class EventPage(BaseModel):
    data: list[EventOut]
    next_cursor: str | None = Field(
        description="Where to continue: the last event's cursor, or the `after` sent when nothing is new."
    )
    has_more: bool = Field(description="More events are visible already: ask again at once.")


def _distinct(types: list[EventType]) -> list[EventType]:
    repeated = sorted({t.value for t in types if types.count(t) > 1})
    if repeated:
        raise PydanticCustomError(
            "repeated", "must not repeat a type: {types}", {"types": ", ".join(repeated)}
        )
    return types


def _storable(text: str) -> str:
    if "\x00" in text:  # PostgreSQL text cannot hold it
        raise refusal(errors.INVALID_REQUEST, "must not contain NUL characters")
    return text


class WebhookCreate(RequestBody):
    url: WebhookUrl
    event_types: Annotated[list[EventType], AfterValidator(_distinct)] | None = Field(
        default=None,
        min_length=1,
        max_length=len(EventType),
        json_schema_extra={"uniqueItems": True},
        description="Only these types, each once; all when absent.",
    )
    description: Annotated[str, AfterValidator(_storable)] | None = Field(default=None, max_length=500)


class WebhookUpdate(RequestBody):
    active: JsonBool = Field(
        description="false pauses deliveries (the endpoint keeps its position); true resumes."
    )


class RedeliverBody(RequestBody):
    """Redelivery takes nothing: no body, or `{}`."""


class WebhookDelivery(BaseModel):
    cursor: str = Field(description="The position in the feed after the last event delivered or given up on.")
    attempts: int = Field(description="Failed attempts at the next event so far.")
    next_attempt_at: str
    last_attempt_at: str | None
    last_success_at: str | None
    last_error: str | None
    delivered: int = Field(description="Events delivered (2xx) so far.")
    dead_letters: int = Field(description="Events given up on and not redelivered since.")


class WebhookOut(BaseModel):
    id: int
    url: str
    event_types: list[EventType] | None
    description: str | None
    active: bool
    created_at: str
    delivery: WebhookDelivery


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="The Standard Webhooks secret: `whsec_` + base64 of the HMAC-SHA256 key. Shown in this answer only."
    )


class WebhookList(BaseModel):
    data: list[WebhookOut]


class DeadLetterOut(BaseModel):
    id: int
    event_id: int
    event_type: EventType
    attempts: int
    last_error: str
    status: Literal["dead", "redeliver", "redelivered"] = Field(
        description="`redeliver`: one more attempt is queued; `redelivered`: it got a 2xx."
    )
    dead_at: str
    redelivered_at: str | None
    event: EventOut = Field(description="The body that was sent, as it will be sent again.")


class DeadLetterPage(BaseModel):
    data: list[DeadLetterOut]
    next_cursor: str | None
