"""The query and path parameters every read route shares, each parsed one way everywhere: times
(`Instant`, by `wallet.domain.times.parse_time`), page sizes (`PageSize`, by `check_limit`),
cursors (`cursor_query`, decoded by `wallet.services.pagination`) and user ids in a path.

A refusal names its parameter, with the one code of its rule: 422 `validation_error` for a time or
a page size, 422 `invalid_request` for a cursor the service did not issue."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import PlainValidator, TypeAdapter, ValidationError, WithJsonSchema
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from wallet.api.dependencies import AppSettings
from wallet.api.request_only import documented
from wallet.domain import errors
from wallet.domain.rules import CURSOR_MAX_CHARS, USER_ID_PATTERN
from wallet.domain.times import TIME_FORMAT_HINT, parse_time
from wallet.services.pagination import check_limit, limit_error


def _instant(value: object) -> datetime:
    if isinstance(value, datetime):  # not from a request: a default, or a direct call
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("time_format", f"give {TIME_FORMAT_HINT}")
    try:
        return parse_time(value)
    except ValueError as exc:
        raise PydanticCustomError("time_format", str(exc)) from None


Instant = Annotated[
    datetime,
    PlainValidator(_instant),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339 with an offset, from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z"
            " in UTC, to the microsecond; no bare numbers",
            "examples": ["2026-01-31T12:00:00Z"],
        }
    ),
]


_WHOLE_NUMBER = re.compile(r"[0-9]{1,9}", re.ASCII)


async def _page_size(
    settings: AppSettings,
    limit: Annotated[
        str | None,
        Query(
            description="Page size: default WALLET_PAGE_SIZE_DEFAULT (50), at most WALLET_PAGE_SIZE_MAX (200)."
        ),
        WithJsonSchema({"type": "integer", "minimum": 1}),
    ] = None,
) -> int:
    """The page size a list route serves: `limit` (ASCII digits) from 1 to WALLET_PAGE_SIZE_MAX,
    WALLET_PAGE_SIZE_DEFAULT without it; anything else is one refusal (see `check_limit`)."""
    if limit is None:
        return settings.page_size_default
    if not _WHOLE_NUMBER.fullmatch(limit):
        raise limit_error(settings.page_size_max)
    return check_limit(int(limit), settings.page_size_default, settings.page_size_max)


# Declared after the caller, so that a request without a key is 401 whatever its limit.
PageSize = Annotated[int, Depends(_page_size)]


def cursor_query(description: str = "`next_cursor` of the previous page, unchanged.", **kwargs: Any) -> Any:
    """A cursor parameter: its length and form are checked by the codec, so that anything it did
    not write gets the one answer (422 `invalid_request`)."""
    return Query(
        default=None,
        description=description,
        json_schema_extra={"maxLength": CURSOR_MAX_CHARS, "pattern": "^[A-Za-z0-9_-]+$"},
        **kwargs,
    )


def known_user_id(user_id: str) -> str:
    """A user id from a path: one that no user can have (the database keeps to USER_ID_PATTERN)
    is 404 `user_not_found` at once, rather than a query the database refuses (a NUL byte)."""
    if not re.fullmatch(USER_ID_PATTERN, user_id):
        raise errors.WalletError(errors.USER_NOT_FOUND, f"no user with id {user_id}")
    return user_id


class QueryParameter:
    """A query parameter of an endpoint that takes the request alone (`wallet.api.request_only`):
    `documented` is what FastAPI shows, and `read` validates the value sent with the same
    annotation and `Query` declaration, as FastAPI would (absent: the default, unvalidated;
    refused: an error located at ("query", name), as FastAPI's)."""

    def __init__(self, name: str, annotation: Any, declaration: FieldInfo) -> None:
        self.alias = declaration.alias or name
        self.default = declaration.default
        self.documented = documented(name, annotation, declaration)
        declared: Any = Annotated[annotation, declaration]
        self.adapter: TypeAdapter[Any] = TypeAdapter(declared)

    def read(self, request: Request, errors: list[dict[str, Any]]) -> Any:
        """The value, or the default; a refusal is appended to `errors` (see `refuse_any`)."""
        sent = request.query_params.get(self.alias)
        if sent is None:
            return self.default
        try:
            return self.adapter.validate_python(sent, from_attributes=True)
        except ValidationError as exc:
            errors.extend(
                {**e, "loc": ("query", self.alias, *e["loc"])} for e in exc.errors(include_url=False)
            )
            return None


def refuse_any(errors: list[dict[str, Any]]) -> None:
    """Raises the refusals of `QueryParameter.read`, all at once, as FastAPI does (422)."""
    if errors:
        raise RequestValidationError(errors)
