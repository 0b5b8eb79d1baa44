"""The `wallet` command line, run as a user would, against the test database."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from tests.support import bearer


def wallet(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"WALLET_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "wallet", *args], env=env, capture_output=True, text=True, timeout=120
    )


async def test_keys_create_prints_the_key_alone_and_it_works(database_url, app):
    result = wallet(
        database_url, "keys", "create", "--name", "shop-service", "--scope", "read", "--scope", "spend"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("wk_")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=bearer(lines[0])
    ) as http:
        assert (await http.get("/api/v1/asset-types")).status_code == 200
        topup = await http.post("/api/v1/transactions/topup", json={})
        assert topup.status_code == 403


async def test_keys_create_rejects_unknown_scope(database_url):
    result = wallet(database_url, "keys", "create", "--name", "x", "--scope", "superuser")
    assert result.returncode == 2
    assert "unknown scope 'superuser'" in result.stderr
    assert result.stdout == ""


async def test_migrate_is_repeatable(database_url):
    result = wallet(database_url, "migrate")
    assert result.returncode == 0, result.stderr


async def test_prune_idempotency_deletes_only_keys_past_retention(database_url, pool, keys):
    api_key_id = await pool.fetchval("SELECT id FROM api_keys WHERE name = 'test-all'")
    await pool.execute(
        "INSERT INTO idempotency_keys (api_key_id, key, request_sha256, outcome, response_body, created_at)"
        " VALUES ($1, 'prune-old', sha256('a'), 'posted', '{}', now() - interval '25 hours'),"
        " ($1, 'prune-recent', sha256('a'), 'posted', '{}', now() - interval '23 hours')",
        api_key_id,
    )
    result = wallet(database_url, "prune-idempotency")
    assert result.returncode == 0, result.stderr
    assert "older than 24 h" in result.stderr
    remaining = {
        r["key"] for r in await pool.fetch("SELECT key FROM idempotency_keys WHERE key LIKE 'prune-%'")
    }
    assert remaining == {"prune-recent"}
