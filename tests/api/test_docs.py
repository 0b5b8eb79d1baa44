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


async def test_metrics_count_every_answer_by_route_template(app, client, keys):
    import httpx

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://wallet.test"
    ) as anonymous:
        assert (await anonymous.get("/api/v1/wallets/user_001/balance")).status_code == 401
    assert (await client.post("/api/v1/users", json={"user_id": "x1", "name": "n"})).status_code == 403
    assert (await client.get("/api/v1/wallets/someone_unknown/balance")).status_code == 404
    assert (await client.post("/api/v1/holds", json={})).status_code in (400, 422)
    assert (await client.get("/no/such/thing")).status_code == 404
    text = (await client.get("/metrics")).text
    for line in (
        'wallet_http_responses_total{method="GET",route="/api/v1/wallets/{user_id}/balance",status="401"}',
        'wallet_http_responses_total{method="POST",route="/api/v1/users",status="403"}',
        'wallet_http_responses_total{method="GET",route="/api/v1/wallets/{user_id}/balance",status="404"}',
        'wallet_http_responses_total{method="GET",route="unmatched",status="404"}',
    ):
        assert line in text, line


async def test_metrics_can_be_protected_by_a_token(settings):
    import httpx

    from wallet.api.app import create_app

    token = "metrics-token-0123456789"
    app = create_app(settings.model_copy(update={"metrics_token": token}))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://wallet.test") as http,
    ):
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
        allowed = await http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert allowed.status_code == 200 and "wallet_http_responses_total" in allowed.text


async def test_swagger_and_redoc_assets_are_served_by_the_service_not_a_cdn(client):
    for page in ("/docs", "/redoc"):
        html = (await client.get(page)).text
        assert "cdn." not in html and "unpkg" not in html, page
        assets = [part.split('"')[0] for part in html.split('"/static-offline-docs/')[1:]]
        assert assets, page
        for asset in assets:
            response = await client.get(f"/static-offline-docs/{asset}")
            assert response.status_code == 200 and len(response.content) > 100, asset
