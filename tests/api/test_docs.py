"""Swagger, ReDoc and an OpenAPI spec that declares every error a route can answer."""

from __future__ import annotations


async def test_swagger_and_redoc_are_served(client):
    assert (await client.get("/docs")).status_code == 200
    assert (await client.get("/redoc")).status_code == 200


async def test_openapi_declares_error_statuses(client):
    spec = (await client.get("/openapi.json")).json()
    topup = spec["paths"]["/api/v1/transactions/topup"]["post"]["responses"]
    assert {"201", "400", "401", "403", "404", "409", "413", "422", "503"} <= set(topup)
    assert topup["409"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
    balance = spec["paths"]["/api/v1/wallets/{user_id}/balance"]["get"]["responses"]
    assert {"200", "401", "403", "404"} <= set(balance)
    assert "bearerAuth" in str(spec["components"]["securitySchemes"]) or spec["components"]["securitySchemes"]


async def test_metrics_count_write_outcomes(client, make_user):
    from tests.support import new_key

    user = await make_user()
    await client.post(
        "/api/v1/transactions/spend",
        headers={"Idempotency-Key": new_key()},
        json={"user_id": user, "asset_type": "GOLD_COINS", "amount": 1},
    )
    text = (await client.get("/metrics")).text
    assert 'wallet_postings_total{kind="spend",replayed="False",status="409"}' in text
    assert "wallet_posting_seconds_bucket" in text
