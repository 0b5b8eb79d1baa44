"""The one way a write is accepted: every write route is `@write(...)`-decorated, and its handler
gets an `AcceptedWrite` from `Write.accept`.

In this order, each step only for a request that passed the ones before:
1. authenticate the API key (401; failed lookups limited per address: 429),
2. the client's rate limit (429),
3. the scope the route needs (403),
4. the body, strictly, against the route's model (400 for what is not UTF-8 JSON, 422 naming the
   field for anything else, the configured limits and the rules between fields included:
   `wallet.api.write_bodies`), then any scope that depends on the body (a batch's operations, a
   clawback into debt: 403),
5. the idempotency key, read once from the header and the body into an `IdempotencyKey` (400 when
   missing or malformed, 422 when the two differ).
The route then hands a command built from these to its service and answers its outcome.

`Write.accept` does these steps itself, in this order, explicitly: the route's endpoint takes the
request alone (`wallet.api.request_only`), because FastAPI's solving of declared parameters and
dependencies was most of a write's CPU (docs/PERFORMANCE.md, issue 19). The body is read as
FastAPI reads a single JSON body (JSON only when sent as application/json or +json, otherwise the
bytes, which the model refuses) and validated against the same model with the same `Body`
declaration, its errors located under "body" as FastAPI's are, so `wallet.api.errors` answers
them as before. FastAPI documents the write from `Write.parameters`: the bearer scheme, the body,
the `Idempotency-Key` header, built from the same objects.
"""

from __future__ import annotations

import email.message
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar, cast

from fastapi import Body, Depends, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from wallet.api.dependencies import Authenticated, Resources, resources_of, settings_of
from wallet.api.idempotency_header import idempotency_key_header
from wallet.api.request_only import RequestEndpoint, documented, request_only
from wallet.api.schemas import RequestBody
from wallet.domain.idempotency import IdempotencyKey
from wallet.domain.rules import Scope
from wallet.services.api_keys import Caller
from wallet.settings import Settings

B = TypeVar("B", bound=RequestBody)

WriteHandler = Callable[..., Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class AcceptedWrite(Generic[B]):
    """A write that passed every check of the HTTP layer, with what its service needs."""

    caller: Caller
    body: B
    idempotency_key: IdempotencyKey
    resources: Resources
    settings: Settings


def _missing_body() -> dict[str, Any]:
    """FastAPI's error for a required body that was not sent."""
    error = ValidationError.from_exception_data(
        "Field required", [{"type": "missing", "loc": ("body",), "input": {}}]
    ).errors(include_url=False)[0]
    error["input"] = None
    return cast(dict[str, Any], error)


def _is_json(content_type: str) -> bool:
    """application/json or application/*+json, parameters aside (as FastAPI decides)."""
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


class Write(Generic[B]):
    """The acceptance of one write route: `model` is its body, `scope` what it needs whatever the
    body (None: only what `body_scopes` finds in it); `body_optional` lets the body be left out
    (then it is `model()`, e.g. a void, or a capture of all of a hold); `key_chars` is
    WALLET_MAX_IDEMPOTENCY_KEY_CHARS, shown in the header's description."""

    def __init__(
        self,
        model: type[B],
        scope: Scope | None,
        *,
        body_scopes: Callable[[B], Iterable[Scope]] | None,
        body_optional: bool,
        key_chars: int,
    ) -> None:
        self.model = model
        self.authenticated = Authenticated(scope)
        self.body_scopes = body_scopes
        self.body_optional = body_optional
        body_declaration = Body(default_factory=model) if body_optional else Body()
        # The body as FastAPI declared and validated it: the model with its `Body` declaration.
        body_annotation: Any = Annotated[model, body_declaration]
        self.body_adapter: TypeAdapter[B] = TypeAdapter(body_annotation)
        # What FastAPI documents: the bearer scheme, the body, the header (in this order).
        self.parameters = [
            documented("caller", Annotated[Caller, Depends(self.authenticated)]),
            documented("body", body_annotation),
            documented(
                "declared_key",
                Annotated[
                    str | None,
                    Header(
                        alias="Idempotency-Key",
                        description="Unique per logical operation; retries must reuse it. A token or a "
                        'quoted structured-field string ("abc" is the key abc); 1 to '
                        f"{key_chars} printable ASCII characters without spaces.",
                    ),
                ],
                None,
            ),
        ]

    async def accept(self, request: Request) -> AcceptedWrite[B]:
        caller = await self.authenticated(request)  # 1-3
        body = await self._body(request)  # 4
        if self.body_scopes is not None:
            for needed in sorted(set(self.body_scopes(body))):
                caller.require(needed)
        settings = settings_of(request)
        key = IdempotencyKey.of(  # 5
            idempotency_key_header(request),
            cast(Any, body).idempotency_key,
            settings.max_idempotency_key_chars,
        )
        return AcceptedWrite(caller, body, key, resources_of(request), settings)

    async def _body(self, request: Request) -> B:
        sent = await request.body()
        if not sent:
            if self.body_optional:
                return self.model()
            raise RequestValidationError([_missing_body()])
        content_type = request.headers.get("content-type")
        value: Any = await request.json() if content_type and _is_json(content_type) else sent
        try:
            return self.body_adapter.validate_python(value, from_attributes=True)
        except ValidationError as exc:
            errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
            raise RequestValidationError(errors, body=value) from None


def accept(
    model: type[B],
    scope: Scope | None,
    *,
    body_scopes: Callable[[B], Iterable[Scope]] | None = None,
    body_optional: bool = False,
    key_chars: int,
    path: tuple[str, ...] = (),
) -> Callable[[WriteHandler], RequestEndpoint]:
    """Makes `handler(accepted, **path_parameters)` a write route's endpoint: it takes the request,
    accepts it (`Write.accept`), and hands the `AcceptedWrite` and the path's parameters (the
    names in `path`, strings) to `handler`."""
    write = Write(model, scope, body_scopes=body_scopes, body_optional=body_optional, key_chars=key_chars)

    def endpoint_of(handler: WriteHandler) -> RequestEndpoint:
        async def endpoint(request: Request) -> Response:
            accepted = await write.accept(request)
            return await handler(accepted, **{name: request.path_params[name] for name in path})

        endpoint.__name__ = handler.__name__
        endpoint.__qualname__ = handler.__qualname__
        endpoint.__doc__ = handler.__doc__
        return request_only(*[documented(name, str) for name in path], *write.parameters)(endpoint)

    return endpoint_of
