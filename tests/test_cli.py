"""The `wallet` command line, run as a user would, against the test database."""

from __future__ import annotations

import json
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


async def test_keys_list_rotate_and_revoke_never_need_the_secret(database_url, app):
    created = wallet(
        database_url,
        *("keys", "create", "--name", "loyalty-service", "--scope", "credit"),
        *("--asset", "LOYALTY_POINTS", "--operation", "bonus", "--max-amount", "1000"),
        *("--rate-limit-rps", "5", "--rate-limit-burst", "10"),
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    prefix = token[:11]

    listed = wallet(database_url, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert token not in listed.stdout
    line = next(row for row in listed.stdout.splitlines() if prefix in row)
    assert "loyalty-service" in line and "credit" in line
    assert "operations=bonus assets=LOYALTY_POINTS max_amount=1000" in line
    assert "5/s,10" in line and line.rstrip().endswith("active")
    as_json = [json.loads(row) for row in wallet(database_url, "keys", "list", "--json").stdout.splitlines()]
    entry = next(k for k in as_json if k["prefix"] == prefix)
    assert entry["allowed_operations"] == ["bonus"] and entry["max_amount"] == 1000
    assert entry["last_used_at"] is None and entry["revoked_at"] is None

    rotated = wallet(database_url, "keys", "rotate", prefix, "--overlap-seconds", "600")
    assert rotated.returncode == 0, rotated.stderr
    new_token = rotated.stdout.strip()
    assert new_token.startswith("wk_") and new_token != token
    assert "works until" in rotated.stderr
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=bearer(new_token)
    ) as http:
        refused = await http.post(
            "/api/v1/transactions/bonus",
            json={"user_id": "nobody", "asset_type": "GOLD_COINS", "amount": 1},
            headers={"Idempotency-Key": "cli-rotated"},
        )
        assert refused.json()["error"]["code"] == "key_asset_not_allowed"  # restrictions carried over

    revoked = wallet(database_url, "keys", "revoke", str(entry["id"]))
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked key {entry['id']}" in revoked.stderr
    again = wallet(database_url, "keys", "revoke", prefix)
    assert again.returncode == 1 and "already revoked" in again.stderr
    unknown = wallet(database_url, "keys", "revoke", "wk_zzzzzzzz")
    assert unknown.returncode == 2 and "no API key" in unknown.stderr
    states = {
        k["prefix"]: k["state"]
        for k in map(json.loads, wallet(database_url, "keys", "list", "--json").stdout.splitlines())
    }
    assert states[prefix] == "revoked" and states[new_token[:11]] == "active"


def test_version_is_the_packages_and_the_changelogs(database_url):
    """`wallet --version`, /health and the newest released entry of CHANGELOG.md name the version of
    pyproject.toml."""
    import tomllib
    from pathlib import Path

    import wallet as package

    root = Path(__file__).resolve().parent.parent
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    result = wallet(database_url, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wallet {declared}\n"
    assert package.__version__ == declared
    changelog = (root / "CHANGELOG.md").read_text()
    released = [
        line for line in changelog.splitlines() if line.startswith("## [") and "Unreleased" not in line
    ]
    assert released and released[0].startswith(f"## [{declared}] - "), released[:1]
    assert "## [Unreleased]" in changelog


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


async def test_report_liabilities_refuses_bad_options_naming_them(database_url):
    for args, option in [
        (("--format", "xml"), "--format"),
        (("--from", "2026-02-01", "--to", "2026-01-01"), "--from"),
        (("--as-of", "yesterday"), "--as-of"),
    ]:
        result = wallet(database_url, "report", "liabilities", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert option in result.stderr, (args, result.stderr)
