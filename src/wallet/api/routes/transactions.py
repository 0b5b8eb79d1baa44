"""POST /api/v1/transactions/{topup,bonus,spend,batch,transfer}, /{id}/reverse, and GET /{id}.

Built per application (`router(bodies)`), because the request models are built from its
settings. Every write is accepted by `wallet.api.write.accept` (authenticate, rate limit, scope,
strict body, idempotency key; its endpoint takes the request alone), then its service runs the
command and `respond` answers. Without `from __future__ import annotations`: FastAPI reads the
annotations of the other endpoints.
"""

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Response

from wallet.api.dependencies import Pool, Reader
from wallet.api.documents import DocumentResponse
from wallet.api.errors import error_responses
from wallet.api.json_body import ExactJSONRoute
from wallet.api.metrics import POSTING_SECONDS
from wallet.api.respond import respond
from wallet.api.schemas import BatchOut, TransactionOut
from wallet.api.write import AcceptedWrite, WriteHandler, accept
from wallet.api.write_bodies import WriteBodies
from wallet.domain.rules import TYPE_RULES, Scope, TransactionType
from wallet.services.reversals import reverse_transaction
from wallet.services.transactions import PostingRequest, get_transaction_json, post_batch, post_transaction
from wallet.services.transfers import TransferRequest, post_transfer

WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"model": TransactionOut, "description": "Posted. Replays carry `Idempotent-Replayed: true`."},
    **error_responses(400, 401, 403, 404, 409, 413, 422, 429, 503),
}


def _summary(type: TransactionType) -> str:
    rule = TYPE_RULES[type]
    direction = "from" if rule.user_sign > 0 else "into"
    assert rule.system_account is not None
    return f"{rule.meaning.capitalize()} ({direction} {rule.system_account.value}; scope `{rule.scope}`)"


async def _post(type: TransactionType, write: AcceptedWrite[Any]) -> Response:
    """A single top-up, bonus or spend."""
    body = write.body
    posting = PostingRequest(
        type=type,
        user_id=body.user_id,
        asset_code=body.asset_type,
        amount_minor=body.amount,
        description=body.description,
        metadata=body.metadata,
        expires_at=getattr(body, "expires_at", None),
        expires_in_seconds=getattr(body, "expires_in_seconds", None),
    )
    with POSTING_SECONDS.labels(type.value).time():
        outcome = await post_transaction(
            write.resources.committer, write.caller, write.idempotency_key, posting
        )
    return respond(type.value, outcome)


def router(bodies: WriteBodies, key_chars: int) -> APIRouter:
    routes = APIRouter(prefix="/api/v1/transactions", tags=["transactions"], route_class=ExactJSONRoute)

    def write(model: type[Any], scope: Scope | None, **options: Any) -> Callable[[WriteHandler], Any]:
        return accept(model, scope, key_chars=key_chars, **options)

    topup_scope = TYPE_RULES[TransactionType.TOPUP].scope
    bonus_scope = TYPE_RULES[TransactionType.BONUS].scope
    spend_scope = TYPE_RULES[TransactionType.SPEND].scope
    Posting = bodies.PostingBody
    Bonus = bodies.BonusBody

    @routes.post(
        "/topup", status_code=201, response_model=None, responses=WRITE_RESPONSES,
        summary=_summary(TransactionType.TOPUP),
    )  # fmt: skip
    @write(Posting, topup_scope)
    async def topup(accepted: AcceptedWrite[Any]) -> Response:
        return await _post(TransactionType.TOPUP, accepted)

    @routes.post(
        "/bonus", status_code=201, response_model=None, responses=WRITE_RESPONSES,
        summary=_summary(TransactionType.BONUS),
    )  # fmt: skip
    @write(Bonus, bonus_scope)
    async def bonus(accepted: AcceptedWrite[Any]) -> Response:
        return await _post(TransactionType.BONUS, accepted)

    @routes.post(
        "/spend", status_code=201, response_model=None, responses=WRITE_RESPONSES,
        summary=_summary(TransactionType.SPEND),
    )  # fmt: skip
    @write(Posting, spend_scope)
    async def spend(accepted: AcceptedWrite[Any]) -> Response:
        return await _post(TransactionType.SPEND, accepted)

    def batch_scopes(body: Any) -> list[Scope]:
        return [TYPE_RULES[op.type].scope for op in body.operations]

    @routes.post(
        "/batch",
        status_code=201,
        response_model=None,
        responses={**WRITE_RESPONSES, 201: {"model": BatchOut, "description": "All posted."}},
        summary="Post several operations atomically: all or none (each operation's scope)",
    )
    @write(bodies.BatchBody, None, body_scopes=batch_scopes)
    async def batch(accepted: AcceptedWrite[Any]) -> Response:
        operations = [
            PostingRequest(
                type=op.type,
                user_id=op.user_id,
                asset_code=op.asset_type,
                amount_minor=op.amount,
                description=op.description,
                metadata=op.metadata,
                to_user_id=op.to_user_id,
                fee_minor=op.fee,
                expires_at=op.expires_at,
                expires_in_seconds=op.expires_in_seconds,
            )
            for op in accepted.body.operations
        ]
        with POSTING_SECONDS.labels("batch").time():
            outcome = await post_batch(
                accepted.resources.pool, accepted.caller, accepted.idempotency_key, operations
            )
        return respond("batch", outcome)

    @routes.get(
        "/{transaction_id}",
        response_model=None,
        responses={200: {"model": TransactionOut}, **error_responses(401, 403, 404, 429, 503)},
    )
    async def get_transaction(pool: Pool, transaction_id: str, caller: Reader) -> Response:
        body = await get_transaction_json(pool, transaction_id)
        return DocumentResponse(body)

    @routes.post(
        "/transfer",
        status_code=201,
        response_model=None,
        responses=WRITE_RESPONSES,
        summary="Move credits from one user to another, with an optional fee (scope `transfer`)",
    )
    @write(bodies.TransferBody, TYPE_RULES[TransactionType.TRANSFER].scope)
    async def transfer(accepted: AcceptedWrite[Any]) -> Response:
        body = accepted.body
        request = TransferRequest(
            from_user_id=body.from_user_id,
            to_user_id=body.to_user_id,
            asset_code=body.asset_type,
            amount_minor=body.amount,
            fee_minor=body.fee,
            description=body.description,
            metadata=body.metadata,
        )
        with POSTING_SECONDS.labels("transfer").time():
            outcome = await post_transfer(
                accepted.resources.pool, accepted.caller, accepted.idempotency_key, request
            )
        return respond("transfer", outcome)

    def reverse_scopes(body: Any) -> list[Scope]:
        """A clawback into debt (`allow_negative`) is the admin's."""
        return [Scope.ADMIN] if body.allow_negative else []

    @routes.post(
        "/{transaction_id}/reverse",
        status_code=201,
        response_model=None,
        responses=WRITE_RESPONSES,
        summary="Refund a spend or capture, or claw back a top-up or bonus, in whole or part (scope `reverse`)",
    )
    # No body (or `{}`) reverses all it may (see ReverseBody.amount); any body that is sent
    # must be a valid object (not null, not malformed: neither may stand for "all").
    @write(
        bodies.ReverseBody,
        Scope.REVERSE,
        body_scopes=reverse_scopes,
        body_optional=True,
        path=("transaction_id",),
    )
    async def reverse(accepted: AcceptedWrite[Any], transaction_id: str) -> Response:
        body = accepted.body
        outcome = await reverse_transaction(
            accepted.resources.pool,
            accepted.caller,
            accepted.idempotency_key,
            transaction_id,
            amount_minor=body.amount,
            reason=body.reason,
            metadata=body.metadata,
            allow_negative=body.allow_negative,
        )
        return respond("reverse", outcome)

    return routes
