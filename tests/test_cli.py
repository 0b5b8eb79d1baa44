"""The `wallet` command line against the test database: each command in this process, through the
same app `python -m wallet` runs (tests.support.wallet_cli), and as a process of its own where that
is what is checked (`python -m wallet --version`, `wallet serve`)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import httpx
import pytest
from tools.service_process import free_port

from tests.conftest import with_database
from tests.support import CliResult, bearer, waiting_on, wallet_cli, wallet_on


def wallet_process(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m wallet ARGS`, a process of its own, with this environment."""
    return subprocess.run(
        [sys.executable, "-m", "wallet", *args], env=env, capture_output=True, text=True, timeout=60
    )


async def test_keys_create_prints_the_key_alone_and_it_works(database_url, app):
    result = wallet_on(
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
    result = wallet_on(database_url, "keys", "create", "--name", "x", "--scope", "superuser")
    assert result.returncode == 2
    assert "unknown scope 'superuser'" in result.stderr
    assert result.stdout == ""


async def test_keys_list_rotate_and_revoke_never_need_the_secret(database_url, app):
    created = wallet_on(
        database_url,
        *("keys", "create", "--name", "loyalty-service", "--scope", "credit"),
        *("--asset", "LOYALTY_POINTS", "--operation", "bonus", "--max-amount", "1000"),
        *("--rate-limit-rps", "5", "--rate-limit-burst", "10"),
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    prefix = token[:11]

    listed = wallet_on(database_url, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert token not in listed.stdout
    line = next(row for row in listed.stdout.splitlines() if prefix in row)
    assert "loyalty-service" in line and "credit" in line
    assert "operations=bonus assets=LOYALTY_POINTS max_amount=1000" in line
    assert "5/s,10" in line and line.rstrip().endswith("active")
    as_json = [
        json.loads(row) for row in wallet_on(database_url, "keys", "list", "--json").stdout.splitlines()
    ]
    entry = next(k for k in as_json if k["prefix"] == prefix)
    assert entry["allowed_operations"] == ["bonus"] and entry["max_amount"] == 1000
    assert entry["last_used_at"] is None and entry["revoked_at"] is None

    rotated = wallet_on(database_url, "keys", "rotate", prefix, "--overlap-seconds", "600")
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

    revoked = wallet_on(database_url, "keys", "revoke", str(entry["id"]))
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked key {entry['id']}" in revoked.stderr
    again = wallet_on(database_url, "keys", "revoke", prefix)
    assert again.returncode == 1 and "already revoked" in again.stderr
    unknown = wallet_on(database_url, "keys", "revoke", "wk_zzzzzzzz")
    assert unknown.returncode == 2 and "no API key" in unknown.stderr
    states = {
        k["prefix"]: k["state"]
        for k in map(json.loads, wallet_on(database_url, "keys", "list", "--json").stdout.splitlines())
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
    # The entry point itself: `python -m wallet` (wallet/__main__.py) in a process of its own.
    result = wallet_process("--version", env=os.environ | {"WALLET_DATABASE_URL": database_url})
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
    result = wallet_on(database_url, "migrate")
    assert result.returncode == 0, result.stderr


async def test_prune_idempotency_deletes_only_keys_past_retention(database_url, pool, keys):
    api_key_id = await pool.fetchval("SELECT id FROM api_keys WHERE name = 'test-all'")
    await pool.execute(
        "INSERT INTO idempotency_keys (api_key_id, key, request_sha256, outcome, response_body, created_at)"
        " VALUES ($1, 'prune-old', sha256('a'), 'posted', '{}', now() - interval '25 hours'),"
        " ($1, 'prune-recent', sha256('a'), 'posted', '{}', now() - interval '23 hours')",
        api_key_id,
    )
    result = wallet_on(database_url, "prune-idempotency")
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
        result = wallet_on(database_url, "report", "liabilities", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert option in result.stderr, (args, result.stderr)


# Operator mistakes: every command answers each with one line on stderr and a non-zero exit,
# never a traceback (wallet.operator_errors). 2: the settings are wrong; 1: the database said no.

COMMANDS: list[tuple[str, ...]] = [
    ("migrate",),
    ("seed",),
    ("seed", "--reference-only"),
    ("verify",),
    ("keys", "create", "--name", "x", "--scope", "read"),
    ("keys", "list"),
    ("keys", "revoke", "wk_zzzzzzzz"),
    ("keys", "rotate", "wk_zzzzzzzz"),
    ("prune-idempotency",),
    ("prune-events",),
    ("holds", "release-expired"),
    ("expire",),
    ("report", "liabilities"),
    ("serve", "--workers", "2"),
]


def run_wallet(
    env: dict[str, str], *args: str, serve_process: bool = True
) -> CliResult | subprocess.CompletedProcess[str]:
    """`wallet ARGS` in this process; `wallet serve` in a process of its own unless not
    `serve_process` (a mistake serve finds before its signal handler: tests.support)."""
    # migrate and serve would wait WALLET_DB_STARTUP_WAIT_MS (60 s) for a database that refuses:
    # these tests want the answer at once (the wait has a test of its own).
    env = {"WALLET_DB_STARTUP_WAIT_MS": "0"} | env
    if args[0] == "serve":  # a free port: should the mistake go unnoticed, the service starts
        args = (*args, "--port", str(free_port()))
        if serve_process:  # and the timeout stops it, failing the test
            clean = {k: v for k, v in os.environ.items() if not k.startswith("WALLET_")}
            return wallet_process(*args, env=clean | env)
    return wallet_cli(*args, env=env, inherit_wallet_env=False)


def assert_one_line_error(
    result: CliResult | subprocess.CompletedProcess[str], code: int, *phrases: str
) -> None:
    where = f"{result.args}: {result.stderr}"
    assert result.returncode == code, where
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), where
    for phrase in phrases:
        assert phrase in lines[0], (phrase, where)
    assert result.stdout == "", where


def every_command(
    env: dict[str, str], commands: list[tuple[str, ...]] = COMMANDS, *, serve_process: bool = True
) -> list[CliResult | subprocess.CompletedProcess[str]]:
    """Each command's result, in order; `serve`'s processes run meanwhile, in threads."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        served = {
            i: pool.submit(run_wallet, env, *c)
            for i, c in enumerate(commands)
            if c[0] == "serve" and serve_process
        }
        here = {
            i: run_wallet(env, *c, serve_process=False) for i, c in enumerate(commands) if i not in served
        }
        return [served[i].result() if i in served else here[i] for i in range(len(commands))]


# Each kind of mistake is tried on every command once; its variants on a few (the commands share
# one path for settings and one for the database, but a variant could break that path alone).
SAMPLE = [("migrate",), ("verify",), ("serve",)]


def test_a_bad_setting_is_named_in_one_line_by_every_command(database_url):
    # Found before serve installs its signal handler: serve too runs in this process.
    env = {"WALLET_DATABASE_URL": database_url, "WALLET_LOT_POLICIES": "not json"}
    for result in every_command(env, serve_process=False):
        assert_one_line_error(result, 2, "WALLET_LOT_POLICIES is not valid JSON")
    for setting, value, phrase in [
        (
            "WALLET_LOT_POLICIES",
            '{"GOLD_COINS": {"spend_order": "cheap"}}',
            "WALLET_LOT_POLICIES (GOLD_COINS",
        ),
        (
            "WALLET_DB_POOL_MAX_SIZE",
            "0",
            "WALLET_DB_POOL_MAX_SIZE: Input should be greater than or equal to 1",
        ),
        (
            "WALLET_DB_CONNECT_TIMEOUT_MS",
            "soon",
            "WALLET_DB_CONNECT_TIMEOUT_MS: Input should be a valid integer",
        ),
        ("WALLET_PORT", "70000", "WALLET_PORT: Input should be less than or equal to 65535"),
        (
            "WALLET_WORKER_HEARTBEAT_TIMEOUT_S",
            "0.5",
            "WALLET_WORKER_HEARTBEAT_TIMEOUT_S: must be 0 (not checked) or at least 1 s",
        ),
        ("WALLET_METRICS_TOKEN", "short-secret", "WALLET_METRICS_TOKEN"),
        # Once taken as they were: serve's workers failed on them at start, with a traceback.
        (
            "WALLET_LOG_LEVEL",
            "loud",
            "WALLET_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
        ),
        (
            "WALLET_REDIS_URL",
            "localhost:6379",
            "WALLET_REDIS_URL: must start with redis://, rediss:// or unix://",
        ),
    ]:
        for result in every_command(
            {"WALLET_DATABASE_URL": database_url, setting: value}, SAMPLE, serve_process=False
        ):
            assert_one_line_error(result, 2, phrase)
            assert "short-secret" not in result.stderr  # values are never echoed: some are secrets


def test_a_database_url_that_is_not_one_is_refused_by_every_command():
    for result in every_command({"WALLET_DATABASE_URL": "mysql://root@127.0.0.1/wallet"}):
        assert_one_line_error(result, 2, "WALLET_DATABASE_URL=mysql://root@127.0.0.1/wallet", "got 'mysql'")
    for url, phrase in [
        ("not a url", "is not a usable PostgreSQL URL"),
        ("postgresql://postgres@127.0.0.1:70000/wallet", "port must be 0-65535"),
        ("postgresql://postgres@127.0.0.1/wallet?sslmode=sometimes", "sslmode"),
    ]:
        for result in every_command({"WALLET_DATABASE_URL": url}, SAMPLE):
            assert_one_line_error(result, 2, "WALLET_DATABASE_URL=", phrase)


def test_a_database_that_cannot_be_used_is_named_by_every_command(database_url):
    unknown = with_database(database_url, "wallet_no_such_database")
    for result in every_command({"WALLET_DATABASE_URL": unknown}):
        assert_one_line_error(result, 1, 'database "wallet_no_such_database" does not exist', unknown)
    refused = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/wallet"
    for result in every_command({"WALLET_DATABASE_URL": refused}):
        assert_one_line_error(result, 1, "connection refused", "postgres:***@")
        assert "hunter2" not in result.stderr
    for url, phrase in [
        ("postgresql://postgres@no-such-host.invalid/wallet", "unknown host"),
        (
            with_database(database_url, "postgres").replace("://postgres@", "://no_such_role@"),
            "login was refused",
        ),
    ]:
        for result in every_command({"WALLET_DATABASE_URL": url}, SAMPLE):
            assert_one_line_error(result, 1, f"cannot connect to WALLET_DATABASE_URL={url}: ", phrase)


def test_migrate_and_serve_wait_for_a_database_that_is_not_up_then_say_so_in_one_line():
    refused = f"postgresql://postgres@127.0.0.1:{free_port()}/wallet"
    env = {"WALLET_DATABASE_URL": refused, "WALLET_DB_STARTUP_WAIT_MS": "1500"}
    for args in [("migrate",), ("serve",)]:
        started = time.monotonic()
        result = run_wallet(env, *args)
        assert 1.4 < time.monotonic() - started < 20, args
        assert result.returncode == 1, result.stderr
        last = result.stderr.splitlines()[-1]  # after the wait's own progress lines
        assert last.startswith(f"error: cannot connect to WALLET_DATABASE_URL={refused}: connection refused")
        assert last.endswith("(retried for 1500 ms: WALLET_DB_STARTUP_WAIT_MS)")
        assert "Traceback" not in result.stderr + result.stdout
    # The other commands do not wait: they are run by hand, against a database that should be up.
    result = run_wallet(env, "verify")
    assert_one_line_error(result, 1, "connection refused")
    assert "retried" not in result.stderr


async def test_a_database_not_migrated_is_refused_by_every_command_but_migrate(create_database):
    empty = await create_database()
    commands = [c for c in COMMANDS if c[0] != "migrate"]
    for result in every_command({"WALLET_DATABASE_URL": empty}, commands):
        assert_one_line_error(result, 1, "has no wallet tables: run `wallet migrate` first")
    migrated = wallet_on(empty, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert wallet_on(empty, "verify").returncode == 0


def test_without_a_database_url_commands_do_not_make_an_empty_embedded_database(tmp_path):
    data_dir = tmp_path / "data"
    commands = [c for c in COMMANDS if c[0] not in ("migrate", "serve")]
    for result in every_command({"WALLET_DATA_DIR": str(data_dir)}, commands):
        assert_one_line_error(result, 1, "WALLET_DATABASE_URL is not set", str(data_dir))
    assert not data_dir.exists()
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    for result in every_command({"WALLET_DATA_DIR": str(blocked)}, [("migrate",), ("serve",)]):
        assert_one_line_error(
            result, 1, "WALLET_DATABASE_URL is not set", "WALLET_DATA_DIR to a writable", str(blocked)
        )


def test_contradictory_flags_are_a_usage_error(database_url):
    for args in [
        ("seed", "--demo", "--reference-only"),
        ("seed", "--reference-only", "--demo"),
        ("keys", "list", "--active", "--no-active"),
        ("serve", "--access-log", "--no-access-log"),
    ]:
        result = run_wallet({"WALLET_DATABASE_URL": database_url}, *args)
        assert result.returncode == 2, (args, result.stderr)
        message = " ".join(result.stderr.replace("│", " ").split())  # the usage error's box, unwrapped
        assert "contradict each other" in message and args[-2] in message and args[-1] in message, message
        assert "Traceback" not in result.stderr and result.stdout == ""


async def test_a_database_at_an_older_migration_is_refused_until_migrated(create_database):
    from wallet.db.migrate import upgrade

    older = await create_database()
    await asyncio.to_thread(upgrade, older, "0008")
    for result in every_command({"WALLET_DATABASE_URL": older}, [("verify",), ("keys", "list"), ("serve",)]):
        assert_one_line_error(
            result, 1, "is at migration 0008, this version of wallet needs", "run `wallet migrate`"
        )
    assert wallet_on(older, "migrate").returncode == 0
    assert wallet_on(older, "keys", "list").returncode == 0


async def test_a_database_a_newer_wallet_migrated_is_refused_even_by_migrate(create_database):
    newer = await create_database()
    assert wallet_on(newer, "migrate").returncode == 0
    conn = await asyncpg.connect(newer)
    try:
        await conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    finally:
        await conn.close()
    for result in every_command({"WALLET_DATABASE_URL": newer}, [("migrate",), ("verify",), ("serve",)]):
        assert_one_line_error(
            result, 1, "is at migration 9999_from_the_future, which this version of wallet does not know"
        )


def test_a_password_is_never_shown():
    for url, shown in [
        ("postgresql://app:s3cret-pw@127.0.0.1:1/wallet", "postgresql://app:***@127.0.0.1:1/wallet"),
        (
            "postgresql://app@127.0.0.1:1/wallet?password=s3cret-pw",
            "postgresql://app@127.0.0.1:1/wallet?password=***",
        ),
        ("app:s3cret-pw@127.0.0.1/wallet", "WALLET_DATABASE_URL=(not shown: not a URL)"),
    ]:
        result = run_wallet({"WALLET_DATABASE_URL": url}, "verify")
        assert result.returncode in (1, 2) and shown in result.stderr, result.stderr
        assert "s3cret" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("wallet_env", "terminate", "expected"),
    [
        ({"WALLET_DB_LOCK_TIMEOUT_MS": "60000"}, True, "lost the connection to the database: "),
        (
            {"WALLET_DB_LOCK_TIMEOUT_MS": "60000", "WALLET_DB_STATEMENT_TIMEOUT_MS": "500"},
            False,
            "the database stopped the command: canceling statement due to statement timeout",
        ),
        (
            {"WALLET_DB_LOCK_TIMEOUT_MS": "200"},
            False,
            "the database stopped the command: canceling statement due to lock timeout (WALLET_DB_LOCK_TIMEOUT_MS)",
        ),
    ],
)
async def test_a_command_the_database_stops_says_so_in_one_line(
    database_url, pool, keys, wallet_env, terminate, expected
):
    """After the check: the command waits on a row lock the test holds, and its backend is
    terminated, or its statement or lock timeout runs out."""
    key_id = await pool.fetchval("SELECT id FROM api_keys WHERE name = 'test-read' ORDER BY id LIMIT 1")
    env = {"WALLET_DATABASE_URL": database_url} | wallet_env
    async with pool.acquire() as locker, locker.transaction():
        await locker.execute("SELECT 1 FROM api_keys WHERE id = $1 FOR UPDATE", key_id)
        # In a thread: this event loop goes on, to see the command wait and to terminate it.
        command = asyncio.create_task(asyncio.to_thread(wallet_cli, "keys", "revoke", str(key_id), env=env))
        if terminate:  # the backend our lock blocks, and no other (the server is shared)
            pids = await waiting_on(pool, await locker.fetchval("SELECT pg_backend_pid()"))
            assert len(pids) == 1, pids
            await pool.execute("SELECT pg_terminate_backend($1)", pids[0])
        result = await asyncio.wait_for(command, 60)
    lines = result.stderr.splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), lines
    assert result.stdout == ""
    assert await pool.fetchval("SELECT revoked_at FROM api_keys WHERE id = $1", key_id) is None
