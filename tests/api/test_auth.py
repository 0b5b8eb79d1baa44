"""Every endpoint but /health needs a valid bearer key with the right scope."""

from __future__ import annotations

import httpx
import pytest

from tests.support import bearer, new_key

PROTECTED = [
    ("GET", "/api/v1/users"),
    ("POST", "/api/v1/users"),
    ("GET", "/api/v1/asset-types"),
    ("GET", "/api/v1/wallets/user_001/balance"),
    ("GET", "/api/v1/wallets/user_001/transactions"),
    ("GET", "/api/v1/transactions/00000000-0000-0000-0000-000000000000"),
    ("POST", "/api/v1/transactions/topup"),
    ("POST", "/api/v1/transactions/bonus"),
    ("POST", "/api/v1/transactions/spend"),
    ("POST", "/api/v1/transactions/batch"),
]


@pytest.fixture
async def anonymous(app):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        yield http


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_missing_or_bad_key_is_401(anonymous, method, path):
    for headers in ({}, bearer("wk_not-a-real-key"), bearer("garbage"), {"Authorization": "Basic eDp5"}):
        response = await anonymous.request(method, path, headers=headers, json={})
        assert response.status_code == 401, (path, headers, response.text)
        assert response.json()["error"]["code"] == "unauthenticated"


async def test_scopes_are_enforced(anonymous, keys, make_user):
    user = await make_user(GOLD_COINS=10)
    write = {"user_id": user, "asset_type": "GOLD_COINS", "amount": 1}
    cases = [
        ("read", "POST", "/api/v1/transactions/topup", 403),
        ("read", "POST", "/api/v1/transactions/spend", 403),
        ("credit", "POST", "/api/v1/transactions/spend", 403),
        ("spend", "POST", "/api/v1/transactions/topup", 403),
        ("spend", "POST", "/api/v1/transactions/bonus", 403),
        ("credit", "GET", f"/api/v1/wallets/{user}/balance", 403),
        ("credit", "POST", "/api/v1/transactions/bonus", 201),
        ("spend", "POST", "/api/v1/transactions/spend", 201),
        ("read", "GET", f"/api/v1/wallets/{user}/balance", 200),
        ("admin", "POST", "/api/v1/transactions/spend", 201),
    ]
    for key_name, method, path, expected in cases:
        kwargs = {"json": write, "headers": bearer(keys[key_name]) | {"Idempotency-Key": new_key()}}
        if method == "GET":
            kwargs = {"headers": bearer(keys[key_name])}
        response = await anonymous.request(method, path, **kwargs)
        assert response.status_code == expected, (key_name, path, response.text)
        if expected == 403:
            assert response.json()["error"]["code"] == "forbidden"


async def test_revoked_key_stops_working(anonymous, pool):
    from wallet.services.api_keys import create_api_key, revoke_api_key

    async with pool.acquire() as conn:
        token = await create_api_key(conn, "short-lived", ["read"])
    assert (await anonymous.get("/api/v1/asset-types", headers=bearer(token))).status_code == 200
    async with pool.acquire() as conn:
        assert await revoke_api_key(conn, token[:11]) is not None
    assert (await anonymous.get("/api/v1/asset-types", headers=bearer(token))).status_code == 401


async def test_keys_are_stored_hashed(pool, keys):
    rows = await pool.fetch("SELECT key_prefix, key_sha256 FROM api_keys")
    stored = {bytes(r["key_sha256"]) for r in rows} | {r["key_prefix"] for r in rows}
    for token in keys.values():
        assert token not in stored
        assert token.encode() not in stored


async def test_health_needs_no_key(anonymous):
    response = await anonymous.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}
