"""Every write is accepted one way (wallet.api.write.accept), in one order: authenticate, rate
limit, scope, strict body, idempotency key; and the request models carry the configured limits,
enforced by pydantic and shown by the OpenAPI document (issue 19 items 1 and 3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.support import bearer
from wallet.api.app import create_app
from wallet.settings import Settings

WRITES = [
    ("/api/v1/transactions/topup", "credit"),
    ("/api/v1/transactions/bonus", "credit"),
    ("/api/v1/transactions/spend", "spend"),
    ("/api/v1/transactions/batch", "credit"),
    ("/api/v1/transactions/transfer", "transfer"),
    ("/api/v1/transactions/00000000-0000-0000-0000-000000000000/reverse", "reverse"),
    ("/api/v1/holds", "spend"),
    ("/api/v1/holds/00000000-0000-0000-0000-000000000000/capture", "spend"),
    ("/api/v1/holds/00000000-0000-0000-0000-000000000000/void", "spend"),
]
MALFORMED = {"content": b"{", "headers": {"Content-Type": "application/json", "Idempotency-Key": '"open'}}


@pytest.fixture
async def anonymous(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        yield http


@pytest.mark.parametrize(("path", "scope"), WRITES)
async def test_each_write_refuses_in_the_one_order(path, scope, anonymous, keys):
    """Each step is answered only for a request that passed the ones before it."""
    wrong = keys["read"]
    right = keys["admin"]

    async def send(key: str | None, **request: Any) -> tuple[int, str]:
        headers = {**request.pop("headers", {}), **(bearer(key) if key else {})}
        response = await anonymous.post(path, headers=headers, **request)
        return response.status_code, response.json()["error"]["code"]

    # No key, a key without the scope, a body that is not JSON, an unclosed quoted key: 401.
    assert await send(None, **MALFORMED) == (401, "unauthenticated")
    # Authenticated, without the scope: 403, whatever the body and the header. A batch needs the
    # scopes of its operations, known once its body is read: there the body comes first.
    if path.endswith("/batch"):
        assert await send(wrong, **MALFORMED) == (400, "malformed_json")
    else:
        assert await send(wrong, **MALFORMED) == (403, "forbidden")
    # With the scope: the body next (400), before the malformed Idempotency-Key.
    assert await send(right, **MALFORMED) == (400, "malformed_json")
    # A valid body (or none where none is needed, else `{}` refused field by field): then the key.
    body = {"operations": [{"type": "topup", "user_id": "u", "asset_type": "GOLD_COINS", "amount": 1}]}
    valid = {
        "/api/v1/transactions/batch": body,
        "/api/v1/transactions/transfer": {
            "from_user_id": "a",
            "to_user_id": "b",
            "asset_type": "GOLD_COINS",
            "amount": 1,
        },
    }.get(path, {"user_id": "u", "asset_type": "GOLD_COINS", "amount": 1})
    if path.endswith(("/reverse", "/capture", "/void")):
        valid = {}
    headers = {"Idempotency-Key": '"open'}
    assert await send(wrong, json=valid, headers=headers) == (403, "forbidden")
    assert await send(right, json=valid, headers=headers) == (400, "idempotency_key_malformed")
    assert await send(right, json=valid) == (400, "idempotency_key_missing")  # fmt: skip


@pytest.fixture
async def tight(settings: Settings, keys: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """The application configured with tighter limits than the defaults."""
    application = create_app(
        settings.model_copy(
            update={
                "max_amount_minor": 50,
                "max_description_chars": 10,
                "max_batch_operations": 2,
                "max_idempotency_key_chars": 8,
                "hold_expires_in_seconds_default": 60,
                "hold_expires_in_seconds_max": 120,
            }
        )
    )
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", headers=bearer(keys["admin"])
        ) as http:
            yield http


async def test_the_configured_limits_are_the_models_and_the_documents(tight, make_user):
    schemas = (await tight.get("/openapi.json")).json()["components"]["schemas"]
    assert schemas["PostingBody"]["properties"]["amount"]["maximum"] == 50
    assert schemas["TransferBody"]["properties"]["fee"]["maximum"] == 50
    assert schemas["CaptureBody"]["properties"]["amount"]["maximum"] == 50
    assert schemas["PostingBody"]["properties"]["description"]["anyOf"][0]["maxLength"] == 10
    assert schemas["ReverseBody"]["properties"]["reason"]["anyOf"][0]["maxLength"] == 10
    assert schemas["PostingBody"]["properties"]["idempotency_key"]["anyOf"][0]["maxLength"] == 8
    assert schemas["BatchBody"]["properties"]["operations"]["maxItems"] == 2
    assert schemas["HoldBody"]["properties"]["expires_in_seconds"]["anyOf"][0]["maximum"] == 120

    user = await make_user()
    topup = {"user_id": user, "asset_type": "GOLD_COINS", "amount": 51}
    cases = [
        ("/api/v1/transactions/topup", topup, "amount", "amount must not exceed 50 (minor units)"),
        ("/api/v1/transactions/topup", {**topup, "amount": 5, "description": "d" * 11}, "description",
         "description must not exceed 10 characters"),
        ("/api/v1/transactions/topup", {**topup, "amount": 5, "idempotency_key": "k" * 9}, "idempotency_key",
         "idempotency_key: String should have at most 8 characters"),
        ("/api/v1/transactions/batch", {"operations": [{**topup, "type": "topup", "amount": 1}] * 3}, "operations",
         "a batch holds 1 to 2 operations"),
        ("/api/v1/holds", {**topup, "amount": 5, "expires_in_seconds": 121}, "expires_in_seconds",
         "expires_in_seconds must not exceed 120"),
    ]  # fmt: skip
    for path, body, field, message in cases:
        response = await tight.post(path, json=body, headers={"Idempotency-Key": "k-1"})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert (error["field"], error["message"]) == (field, message)
    # A key from the header is held to the same configured length.
    response = await tight.post("/api/v1/transactions/topup", json={**topup, "amount": 5},
                                headers={"Idempotency-Key": "k" * 9})  # fmt: skip
    assert response.json()["error"] == {
        "code": "invalid_request",
        "message": "idempotency key must be 1 to 8 printable ASCII characters without spaces",
        "field": "idempotency_key",
    }
    ok = await tight.post(
        "/api/v1/transactions/topup", json={**topup, "amount": 50}, headers={"Idempotency-Key": "k-2"}
    )
    assert ok.status_code == 201, ok.text


def test_a_hold_default_beyond_the_maximum_is_refused_at_start():
    with pytest.raises(ValueError, match="HOLD_EXPIRES_IN_SECONDS_DEFAULT"):
        Settings(hold_expires_in_seconds_default=600, hold_expires_in_seconds_max=300)
