"""Keys over their life: listed without secrets, revoked by id or prefix, rotated with an overlap,
last use recorded off the request path, and idempotency scoped to the client across a rotation."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from tests.support import bearer, ledger_counts, new_key
from wallet.domain.errors import WalletError
from wallet.domain.rules import KeyOperation
from wallet.services.api_keys import (
    KeyRestrictions,
    RateLimitOverride,
    create_api_key,
    find_api_key,
    list_api_keys,
    revoke_api_key,
    rotate_api_key,
)


def _http(app: Any, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=bearer(token)
    )


async def test_list_shows_no_secret_and_revoke_works_by_id_or_prefix(pool):
    async with pool.acquire() as conn:
        first = await create_api_key(conn, "lister-a", ["read"])
        second = await create_api_key(
            conn, "lister-b", ["credit"], restrictions=KeyRestrictions(max_amount_minor=5)
        )
        listed = {k.name: k for k in await list_api_keys(conn)}
        a, b = listed["lister-a"], listed["lister-b"]
        assert a.prefix == first[:11] and b.prefix == second[:11]
        assert b.restrictions.max_amount_minor == 5 and b.scopes == ("credit",)
        assert a.state == "active" and a.last_used_at is None
        rendered = repr(listed)
        assert first not in rendered and second not in rendered

        assert (await revoke_api_key(conn, str(a.id))) is not None
        assert (await revoke_api_key(conn, b.prefix)) is not None
        assert await revoke_api_key(conn, str(a.id)) is None  # already revoked
        states = {k.name: k.state for k in await list_api_keys(conn)}
        assert states["lister-a"] == states["lister-b"] == "revoked"
        active = {k.name for k in await list_api_keys(conn, include_revoked=False)}
        assert "lister-a" not in active

        with pytest.raises(WalletError, match="no API key"):
            await find_api_key(conn, "999999999")
        with pytest.raises(WalletError, match="id or its 11-character prefix"):
            await find_api_key(conn, first)  # the secret itself is not an identifier


async def test_an_ambiguous_prefix_is_refused(pool):
    async with pool.acquire() as conn:
        await create_api_key(conn, "twin", ["read"])
        twin = next(k for k in await list_api_keys(conn) if k.name == "twin")
        # A second key that happens to share the display prefix.
        await conn.execute(
            "INSERT INTO api_keys (name, key_prefix, key_sha256, scopes) VALUES ('twin-2', $1, sha256('t2'), '{read}')",
            twin.prefix,
        )
        with pytest.raises(WalletError, match="matches keys"):
            await revoke_api_key(conn, twin.prefix)
        assert (await find_api_key(conn, str(twin.id))).state == "active"


async def test_rotation_overlaps_then_the_old_key_stops(app, pool, make_user):
    user = await make_user()
    async with pool.acquire() as conn:
        old = await create_api_key(
            conn,
            "rotating",
            ["credit", "read"],
            restrictions=KeyRestrictions(operations=frozenset({KeyOperation.TOPUP}), max_amount_minor=100),
            rate_limit=RateLimitOverride(rps=50, burst=100),
        )
        rotation = await rotate_api_key(conn, old[:11], overlap_seconds=3600)
    assert rotation.new_key.client_id == rotation.old_key.client_id == rotation.old_key.id
    assert rotation.new_key.restrictions == rotation.old_key.restrictions
    assert rotation.new_key.rate_limit == RateLimitOverride(rps=50, burst=100)
    assert rotation.old_key.state == "expiring" and rotation.new_key.state == "active"
    async with _http(app, old) as old_http, _http(app, rotation.token) as new_http:
        # Both work during the overlap.
        assert (await old_http.get(f"/api/v1/wallets/{user}/balance")).status_code == 200
        assert (await new_http.get(f"/api/v1/wallets/{user}/balance")).status_code == 200
        async with pool.acquire() as conn:
            await rotate_api_key(conn, str(rotation.new_key.id), overlap_seconds=0)
        # Overlap 0: the rotated key stops at once (the test app caches nothing).
        assert (await new_http.get(f"/api/v1/wallets/{user}/balance")).status_code == 401
        assert (await old_http.get(f"/api/v1/wallets/{user}/balance")).status_code == 200
    async with pool.acquire() as conn:
        with pytest.raises(WalletError, match="revoked or expired"):
            await rotate_api_key(conn, str(rotation.new_key.id), overlap_seconds=0)


async def test_a_retry_across_a_rotation_replays_instead_of_posting_twice(app, pool, make_user):
    user = await make_user()
    async with pool.acquire() as conn:
        old = await create_api_key(conn, "payments", ["credit", "read"])
        new = (await rotate_api_key(conn, old[:11], overlap_seconds=60)).token
    key = new_key()
    body = {"user_id": user, "asset_type": "GOLD_COINS", "amount": 70}
    async with _http(app, old) as old_http, _http(app, new) as new_http:
        first = await old_http.post("/api/v1/transactions/topup", json=body, headers={"Idempotency-Key": key})
        assert first.status_code == 201
        counts = await ledger_counts(pool)
        retry = await new_http.post("/api/v1/transactions/topup", json=body, headers={"Idempotency-Key": key})
        assert retry.status_code == 201
        assert retry.headers["Idempotent-Replayed"] == "true"
        assert retry.content == first.content
        assert await ledger_counts(pool) == counts
        changed = await new_http.post(
            "/api/v1/transactions/topup", json=body | {"amount": 71}, headers={"Idempotency-Key": key}
        )
        assert changed.status_code == 422
        assert changed.json()["error"]["code"] == "idempotency_key_reused"
    # Another client with the same idempotency key is someone else's request.
    async with pool.acquire() as conn:
        other = await create_api_key(conn, "other-client", ["credit"])
    async with _http(app, other) as other_http:
        response = await other_http.post(
            "/api/v1/transactions/topup", json=body, headers={"Idempotency-Key": key}
        )
        assert response.status_code == 201
        assert "Idempotent-Replayed" not in response.headers


async def test_last_use_is_written_in_the_background_not_per_request(app, pool):
    async with pool.acquire() as conn:
        token = await create_api_key(conn, "usage", ["read"])
        await create_api_key(conn, "unused", ["read"])
    async with _http(app, token) as http:
        assert (await http.get("/api/v1/asset-types")).status_code == 200
    async with pool.acquire() as conn:
        used = {k.name: k for k in await list_api_keys(conn)}
    assert used["usage"].last_used_at is None  # not yet flushed: nothing written on the request path
    assert await app.state.resources.authenticator.flush_usage() >= 1
    async with pool.acquire() as conn:
        used = {k.name: k for k in await list_api_keys(conn)}
    assert used["usage"].last_used_at is not None
    assert used["unused"].last_used_at is None


async def test_expired_key_is_refused(app, pool: asyncpg.Pool):
    async with pool.acquire() as conn:
        token = await create_api_key(conn, "expired", ["read"])
        await conn.execute(
            "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE name = 'expired'"
        )
    async with _http(app, token) as http:
        response = await http.get("/api/v1/asset-types")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"
