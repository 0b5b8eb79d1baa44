"""Table of bad requests: each gets a clear 4xx in the one error shape, and nothing is written."""

from __future__ import annotations

import json

import pytest

from tests.support import ledger_counts, new_key

TOPUP = "/api/v1/transactions/topup"
VALID = {"user_id": "user_placeholder", "asset_type": "GOLD_COINS", "amount": 5}


def raw(text: str | bytes) -> dict:
    return {"content": text, "headers": {"Content-Type": "application/json"}}


def raw_valid(**json_texts: str) -> dict:
    """The valid body with some members given as raw JSON text (what json.dumps cannot write)."""
    members = {key: json.dumps(value) for key, value in VALID.items()} | json_texts
    return raw("{" + ", ".join(f'"{key}": {text}' for key, text in members.items()) + "}")


def valid_with(**changes: object) -> dict:
    payload = dict(VALID)
    for key, value in changes.items():
        if value is ...:
            payload.pop(key)
        else:
            payload[key] = value
    return {"json": payload}


CASES: list[tuple[str, dict, int, str, str | None]] = [
    # name, request kwargs, status, error code, field
    ("malformed json", raw('{"user_id": "x", "amount": '), 400, "malformed_json", None),
    ("not an object", raw("[1, 2, 3]"), 422, "validation_error", None),
    (
        "non-utf8 body",
        raw(b'{"user_id": "\xff\xfe", "asset_type": "GOLD_COINS", "amount": 1}'),
        400,
        None,
        None,
    ),
    ("one megabyte body", raw('{"user_id": "' + "a" * 1_048_576 + '"}'), 413, "body_too_large", None),
    ("zero amount", valid_with(amount=0), 422, "validation_error", "amount"),
    ("negative amount", valid_with(amount=-5), 422, "validation_error", "amount"),
    ("fractional amount", valid_with(amount=1.5), 422, "validation_error", "amount"),
    ("string amount", valid_with(amount="5"), 422, "validation_error", "amount"),
    ("boolean amount", valid_with(amount=True), 422, "validation_error", "amount"),
    ("null amount", valid_with(amount=None), 422, "validation_error", "amount"),
    # Above the hard ceiling is above the configured maximum too: one check, the configured one.
    ("huge amount", valid_with(amount=10**30), 422, "limit_exceeded", "amount"),
    ("above configured maximum", valid_with(amount=1_000_001), 422, "limit_exceeded", "amount"),
    ("missing amount", valid_with(amount=...), 422, "validation_error", "amount"),
    ("missing user", valid_with(user_id=...), 422, "validation_error", "user_id"),
    ("unknown field", valid_with(currency="USD"), 422, "validation_error", "currency"),
    ("lowercase asset", valid_with(asset_type="gold_coins"), 422, "validation_error", "asset_type"),
    ("unknown asset", valid_with(asset_type="SILVER"), 404, "asset_type_not_found", "asset_type"),
    ("unknown user", valid_with(user_id="nobody"), 404, "user_not_found", "user_id"),
    (
        "sql injection in user",
        valid_with(user_id="x'; DROP TABLE accounts;--"),
        422,
        "validation_error",
        "user_id",
    ),
    (
        "sql injection in asset",
        valid_with(asset_type="GOLD' OR '1'='1"),
        422,
        "validation_error",
        "asset_type",
    ),
    ("metadata not an object", valid_with(metadata=[1, 2]), 422, "validation_error", "metadata"),
    ("metadata too large", valid_with(metadata={"blob": "x" * 5_000}), 422, "limit_exceeded", "metadata"),
    ("description too long", valid_with(description="d" * 501), 422, "limit_exceeded", "description"),
    ("NUL in description", valid_with(description="a\x00b"), 422, "invalid_request", "description"),
    ("NUL in metadata", valid_with(metadata={"k": ["a\x00"]}), 422, "invalid_request", "metadata"),
    (
        "idempotency key with spaces",
        valid_with(idempotency_key="has spaces"),
        422,
        "validation_error",
        "idempotency_key",
    ),
    (
        "idempotency key too long",
        valid_with(idempotency_key="k" * 256),
        422,
        "validation_error",
        "idempotency_key",
    ),
    # Money is parsed exactly from the JSON text, never through a binary float.
    ("amount a hair below 2", raw_valid(amount="1.99999999999999999"), 422, "validation_error", "amount"),
    ("amount with exponent leaving a fraction", raw_valid(amount="15e-1"), 422, "validation_error", "amount"),
    ("amount NaN", raw_valid(amount="NaN"), 400, "malformed_json", None),
    ("amount Infinity", raw_valid(amount="-Infinity"), 400, "malformed_json", None),
    ("metadata number out of range", raw_valid(metadata='{"x": 1e400}'), 400, "malformed_json", None),
    ("metadata NaN", raw_valid(metadata='{"x": NaN}'), 400, "malformed_json", None),
    (
        "duplicate key",
        raw('{"user_id": "user_placeholder", "asset_type": "GOLD_COINS", "amount": 5, "amount": 500}'),
        400,
        "malformed_json",
        None,
    ),
    (
        "metadata integer beyond 64 bits",
        raw_valid(metadata='{"n": ' + str(2**70) + "}"),
        422,
        None,
        "metadata",
    ),
    ("metadata lone surrogate", raw_valid(metadata='{"s": "\\ud800"}'), 422, None, "metadata"),
    (
        "metadata nested too deep",
        raw_valid(metadata='{"a": ' * 40 + "1" + "}" * 40),
        422,
        "limit_exceeded",
        "metadata",
    ),
]


@pytest.mark.parametrize(
    ("name", "request_kwargs", "status", "code", "field"), CASES, ids=[c[0] for c in CASES]
)
async def test_bad_input_gets_clear_4xx_and_writes_nothing(
    client, pool, make_user, name, request_kwargs, status, code, field
):
    user = await make_user(GOLD_COINS=100)
    if "json" in request_kwargs and request_kwargs["json"].get("user_id") == "user_placeholder":
        request_kwargs = {"json": request_kwargs["json"] | {"user_id": user}}
    elif isinstance(request_kwargs.get("content"), str):
        request_kwargs = request_kwargs | {
            "content": request_kwargs["content"].replace("user_placeholder", user)
        }
    headers = dict(request_kwargs.pop("headers", {}))
    if "idempotency_key" not in request_kwargs.get("json", {}):
        headers["Idempotency-Key"] = new_key()
    before = await ledger_counts(pool)
    response = await client.post(TOPUP, headers=headers, **request_kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "field"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    assert error["field"] == field
    assert await ledger_counts(pool) == before


async def test_injection_strings_are_stored_verbatim_not_executed(client, make_user):
    user = await make_user()
    nasty = "'); DELETE FROM ledger_entries; -- \U0001f600 <script> \\u0000"
    response = await client.post(
        TOPUP,
        headers={"Idempotency-Key": new_key()},
        json={
            "user_id": user,
            "asset_type": "GOLD_COINS",
            "amount": 1,
            "description": nasty,
            "metadata": {"note": nasty},
        },
    )
    assert response.status_code == 201
    fetched = await client.get(f"/api/v1/transactions/{response.json()['id']}")
    assert fetched.json()["description"] == nasty
    assert fetched.json()["metadata"] == {"note": nasty}


async def test_an_amount_written_as_a_json_number_is_refused_and_writes_nothing(client, make_user):
    user = await make_user()
    response = await client.post(
        TOPUP,
        content=json.dumps({"user_id": user, "asset_type": "GOLD_COINS", "amount": 7.0}),
        headers={"Idempotency-Key": new_key(), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("validation_error", "amount")
    assert "JSON integer" in error["message"]
    balance = await client.get(f"/api/v1/wallets/{user}/balance")
    assert balance.status_code == 200
    assert all(b["balance"] == 0 for b in balance.json()["balances"])


async def test_unknown_route_and_method_use_the_error_shape(client):
    missing = await client.get("/api/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong_method = await client.delete("/api/v1/transactions/topup")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


async def test_nul_bytes_in_path_and_query_are_4xx(client):
    for path in (
        "/api/v1/wallets/a%00b/balance",
        "/api/v1/wallets/a%00b/transactions",
        "/api/v1/wallets/user_001/balance?asset_type=A%00",
        "/api/v1/transactions/%00",
    ):
        response = await client.get(path)
        assert 400 <= response.status_code < 500, (path, response.text)
        assert response.json()["error"]["code"]


async def test_metadata_the_encoder_cannot_take_back_is_refused_on_every_write(admin, pool, make_user):
    import json

    from tests.support import ledger_counts, new_key

    user = await make_user(GOLD_COINS=10)
    before = await ledger_counts(pool)
    for metadata in ({"n": 2**70}, {"s": "\ud800"}):
        for path, body in (
            ("/api/v1/transactions/topup", {"user_id": user, "asset_type": "GOLD_COINS", "amount": 1}),
            ("/api/v1/holds", {"user_id": user, "asset_type": "GOLD_COINS", "amount": 1}),
        ):
            response = await admin.post(
                path,
                headers={"Idempotency-Key": new_key(), "Content-Type": "application/json"},
                content=json.dumps({**body, "metadata": metadata}),
            )
            assert response.status_code == 422, (path, metadata, response.text)
            assert response.json()["error"]["field"] == "metadata"
    assert await ledger_counts(pool) == before


async def test_expiries_end_at_ten_years_as_documented(admin, make_user, pool):
    """At most ten years ahead: `expires_at` by the calendar, `expires_in_seconds` at most 3,652
    days (ten years at their shortest); the old ceiling (10 x 366 days) went a week past."""
    from datetime import UTC, datetime, timedelta

    user = await make_user()
    now = datetime.now(UTC)
    try:
        ten_years = now.replace(year=now.year + 10)
    except ValueError:  # 29 February
        ten_years = now.replace(year=now.year + 10, day=28)
    day = 86400
    refused = [
        {"expires_in_seconds": 3652 * day + 1},
        {"expires_in_seconds": 3660 * day},
        {"expires_at": (ten_years + timedelta(minutes=5)).isoformat()},
        {"expires_at": (ten_years + timedelta(days=7)).isoformat()},
    ]
    before = await ledger_counts(pool)
    for expiry in refused:
        body = {"user_id": user, "asset_type": "GOLD_COINS", "amount": 1, **expiry}
        (name,) = expiry
        single = await admin.post(
            "/api/v1/transactions/bonus", headers={"Idempotency-Key": new_key()}, json=body
        )
        batch = await admin.post(
            "/api/v1/transactions/batch",
            headers={"Idempotency-Key": new_key()},
            json={"operations": [{"type": "bonus", **body}]},
        )
        for response, field in ((single, name), (batch, f"operations[0].{name}")):
            assert response.status_code == 422, (expiry, response.text)
            assert response.json()["error"]["field"] == field
    assert await ledger_counts(pool) == before
    for expiry in (
        {"expires_in_seconds": 3652 * day},
        {"expires_at": (ten_years - timedelta(minutes=5)).isoformat()},
    ):
        body = {"user_id": user, "asset_type": "GOLD_COINS", "amount": 1, **expiry}
        response = await admin.post(
            "/api/v1/transactions/bonus", headers={"Idempotency-Key": new_key()}, json=body
        )
        assert response.status_code == 201, (expiry, response.text)
