"""The one way a write is accepted: every write route takes an `AcceptedWrite` from `accept`.

In this order, each step only for a request that passed the ones before:
1. authenticate the API key (401; failed lookups limited per address: 429),
2. the client's rate limit (429),
3. the scope the route needs (403),
4. the body, strictly, against the route's model (400 for what is not UTF-8 JSON, 422 naming the
   field for anything else, the configured limits included: `wallet.api.write_bodies`), then any
   scope that depends on the body (a batch's operations, a clawback into debt: 403),
5. the idempotency key, read once from the header and the body into an `IdempotencyKey` (400 when
   missing or malformed, 422 when the two differ).
The route then hands a command built from these to its service and answers its outcome.

Steps 1-4 are FastAPI's dependency solving (it runs the caller's dependency before it validates
the body, and answers the first exception); the dependency below is the one place that lists them,
so every write route gets the same order and the same answers. Deliberately without
`from __future__ import annotations`: the body's model is a value known only when `accept` is
called, and FastAPI reads the annotations of the dependency it builds.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar, cast

from fastapi import Body, Depends, Header, Request

from wallet.api.dependencies import Authenticated, Resources, resources_of, settings_of
from wallet.api.idempotency_header import idempotency_key_header
from wallet.api.schemas import RequestBody
from wallet.domain.idempotency import IdempotencyKey
from wallet.domain.rules import Scope
from wallet.services.api_keys import Caller
from wallet.settings import Settings

B = TypeVar("B", bound=RequestBody)


@dataclass(frozen=True, slots=True)
class AcceptedWrite(Generic[B]):
    """A write that passed every check of the HTTP layer, with what its service needs."""

    caller: Caller
    body: B
    idempotency_key: IdempotencyKey
    resources: Resources
    settings: Settings


def accept(
    model: type[B],
    scope: Scope | None,
    *,
    body_scopes: Callable[[B], Iterable[Scope]] | None = None,
    body_optional: bool = False,
    key_chars: int,
) -> Any:
    """`Annotated[AcceptedWrite[Model], accept(Model, scope, key_chars=...)]`. `scope` is what
    the route needs whatever the body (None: only what `body_scopes` finds in it); `body_optional`
    lets the body be left out (then it is `model()`, e.g. a void, or a capture of all of a hold);
    `key_chars` is WALLET_MAX_IDEMPOTENCY_KEY_CHARS, shown in the header's description."""
    caller_dependency = Depends(Authenticated(scope))
    body_parameter = Body(default_factory=model) if body_optional else Body()

    async def accepted(
        request: Request,
        caller: Annotated[Caller, caller_dependency],
        body: Annotated[model, body_parameter],  # type: ignore[valid-type]
        declared_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                description="Unique per logical operation; retries must reuse it. A token or a quoted "
                f'structured-field string ("abc" is the key abc); 1 to {key_chars} '
                "printable ASCII characters without spaces.",
            ),
        ] = None,
    ) -> AcceptedWrite[B]:
        if body_scopes is not None:
            for needed in sorted(set(body_scopes(body))):
                caller.require(needed)
        settings = settings_of(request)
        key = IdempotencyKey.of(
            idempotency_key_header(request),
            cast(Any, body).idempotency_key,
            settings.max_idempotency_key_chars,
        )
        return AcceptedWrite(caller, body, key, resources_of(request), settings)

    return Depends(accepted)
