"""The `wallet` command: serve, migrate, seed, verify, keys, prune-idempotency, bench, bank-test.

Every command uses WALLET_DATABASE_URL when it is set, and the embedded PostgreSQL in
WALLET_DATA_DIR when it is not.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from wallet.settings import Settings, get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
keys_app = typer.Typer(no_args_is_help=True, help="Create and revoke API keys.")
app.add_typer(keys_app, name="keys")

DEMO_KEY_FILE = "demo-api-key"
DEMO_SCOPES = ["read", "credit", "spend", "admin"]


@contextmanager
def _database(settings: Settings) -> Iterator[tuple[str, bool]]:
    """The URL to use, and whether it is the embedded server (started, and stopped, if needed)."""
    if settings.database_url:
        yield settings.database_url, False
        return
    from wallet.embedded import embedded_postgres

    with embedded_postgres(settings.data_dir) as url:
        yield url, True


def _raise_system_exit_on_sigterm() -> None:
    """uvicorn re-raises the signal that stopped it once it has shut down; a Python handler turns
    SIGTERM into SystemExit so `finally` blocks (stopping the embedded database) still run."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _err(message: str) -> None:
    typer.echo(message, err=True)


@app.command()
def migrate() -> None:
    """Apply database migrations (Alembic) up to the newest."""
    from wallet.db.migrate import upgrade_to_head

    with _database(get_settings()) as (url, _):
        upgrade_to_head(url)
    _err("migrations applied")


async def _seed(url: str, demo: bool) -> None:
    from wallet.db.pool import connection
    from wallet.services.seed import seed_demo_data, seed_reference_data

    async with connection(get_settings(), url) as conn:
        if demo:
            await seed_demo_data(conn)
        else:
            await seed_reference_data(conn)


@app.command()
def seed(
    demo: Annotated[
        bool, typer.Option("--demo/--reference-only", help="Also create Alice and Bob with initial balances.")
    ] = True,
) -> None:
    """Create asset types and system accounts (and demo users). Running it twice changes nothing."""
    with _database(get_settings()) as (url, _):
        asyncio.run(_seed(url, demo))
    _err("seed data in place")


async def _verify(url: str) -> bool:
    from wallet.db.pool import connection
    from wallet.services.verify import verify_ledger

    async with connection(get_settings(), url) as conn:
        report = await verify_ledger(conn)
    typer.echo(report.render())
    return report.clean


@app.command()
def verify() -> None:
    """Recompute every balance from the ledger; exit 1 with a report if anything disagrees."""
    with _database(get_settings()) as (url, _):
        clean = asyncio.run(_verify(url))
    if not clean:
        raise typer.Exit(code=1)


async def _create_key(url: str, name: str, scopes: list[str]) -> str:
    from wallet.db.pool import connection
    from wallet.services.api_keys import create_api_key

    async with connection(get_settings(), url) as conn:
        return await create_api_key(conn, name, scopes)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who the key is for, e.g. the calling service.")],
    scope: Annotated[list[str], typer.Option(help="read, credit, spend or admin; repeatable.")],
) -> None:
    """Create an API key and print it alone on stdout (it is stored only as a hash)."""
    from wallet.domain.errors import WalletError

    try:
        with _database(get_settings()) as (url, _):
            token = asyncio.run(_create_key(url, name, scope))
    except WalletError as exc:
        _err(f"error: {exc.message}")
        raise typer.Exit(code=2) from None
    typer.echo(token)


async def _revoke_key(url: str, token: str) -> bool:
    from wallet.db.pool import connection
    from wallet.services.api_keys import revoke_api_key

    async with connection(get_settings(), url) as conn:
        return await revoke_api_key(conn, token)


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="The API key to revoke.")]) -> None:
    """Revoke an API key (effective within WALLET_AUTH_CACHE_TTL_MS)."""
    with _database(get_settings()) as (url, _):
        revoked = asyncio.run(_revoke_key(url, key))
    if not revoked:
        _err("no such active key")
        raise typer.Exit(code=1)
    _err("revoked")


async def _prune(url: str, hours: int) -> int:
    from wallet.db.pool import connection

    async with connection(get_settings(), url) as conn:
        result = await conn.execute(
            "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)", hours
        )
    return int(result.split()[-1])


@app.command("prune-idempotency")
def prune_idempotency() -> None:
    """Delete stored idempotency keys older than WALLET_IDEMPOTENCY_RETENTION_HOURS."""
    settings = get_settings()
    with _database(settings) as (url, _):
        deleted = asyncio.run(_prune(url, settings.idempotency_retention_hours))
    _err(f"deleted {deleted} idempotency keys older than {settings.idempotency_retention_hours} h")


async def _demo_key(url: str, key_file: Path) -> str:
    """The embedded demo's API key: reused across restarts while it is still valid."""
    from wallet.db.pool import connection
    from wallet.services.api_keys import create_api_key, is_active_api_key

    async with connection(get_settings(), url) as conn:
        if key_file.exists():
            token = key_file.read_text().strip()
            if await is_active_api_key(conn, token):
                return token
        token = await create_api_key(conn, "demo", DEMO_SCOPES)
    key_file.write_text(token + "\n")
    key_file.chmod(0o600)
    return token


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Default WALLET_HOST (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Default WALLET_PORT (8000).")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
) -> None:
    """Run the HTTP service. Without WALLET_DATABASE_URL: start the embedded PostgreSQL, migrate,
    seed demo data and print a demo API key."""
    import uvicorn

    from wallet.db.migrate import upgrade_to_head

    settings = get_settings()
    host = host or settings.host
    port = port or settings.port
    _raise_system_exit_on_sigterm()
    with _database(settings) as (url, embedded):
        if embedded:
            upgrade_to_head(url)
            asyncio.run(_seed(url, demo=True))
            token = asyncio.run(_demo_key(url, settings.data_dir / DEMO_KEY_FILE))
            os.environ["WALLET_DATABASE_URL"] = url
            get_settings.cache_clear()
            base = f"http://{host}:{port}"
            print(
                f"\nWallet service (embedded PostgreSQL in {settings.data_dir.resolve()})\n"
                f"  URL:      {base}\n  Swagger:  {base}/docs\n  ReDoc:    {base}/redoc\n"
                f"  API key:  {token}\n\n"
                f"  curl -H 'Authorization: Bearer {token}' {base}/api/v1/wallets/user_001/balance\n",
                file=sys.stderr,
                flush=True,
            )
        uvicorn.run(
            "wallet.api.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            access_log=access_log,
            log_level=settings.log_level.lower(),
            timeout_graceful_shutdown=10,
        )


@app.command()
def bench(
    database_url: Annotated[
        str,
        typer.Option(
            envvar="WALLET_BENCH_DATABASE_URL",
            help="A PostgreSQL server to benchmark on (a scratch database is created there).",
        ),
    ] = "postgresql://postgres@127.0.0.1:5432/postgres",
    clients: Annotated[str, typer.Option(help="Comma-separated concurrency levels.")] = "1,16,64",
    seconds: Annotated[int, typer.Option(min=1, max=600, help="Duration of each measurement.")] = 10,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Service worker processes.")] = 2,
    batch_size: Annotated[int, typer.Option(min=1, max=1000, help="Operations per batch request.")] = 100,
    scenarios: Annotated[
        str, typer.Option(help="Any of topup,spend,balance,batch.")
    ] = "topup,spend,balance,batch",
    output: Annotated[Path | None, typer.Option(help="Also write the figures as JSON here.")] = None,
) -> None:
    """Throughput and latency over HTTP at each concurrency, beside pgbench on the same server."""
    from wallet.bench import LUA_REQUEST, run_bench

    chosen = [s.strip() for s in scenarios.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(LUA_REQUEST))
    if unknown:
        _err(f"unknown scenarios: {', '.join(unknown)}")
        raise typer.Exit(code=2)
    run_bench(
        database_url,
        clients=[int(c) for c in clients.split(",")],
        seconds=seconds,
        workers=workers,
        batch_size=batch_size,
        scenarios=chosen,
        output=output,
    )


@app.command("bank-test")
def bank_test(
    clients: Annotated[int, typer.Option(min=1, max=512, help="Concurrent HTTP clients.")] = 64,
    operations: Annotated[int, typer.Option(min=1, max=1_000_000, help="Operations in all.")] = 20_000,
    users: Annotated[int, typer.Option(min=1, max=10_000, help="Distinct users.")] = 50,
    server_kills: Annotated[int, typer.Option(min=0, max=100, help="SIGKILLs of the service.")] = 3,
    postgres_restarts: Annotated[int, typer.Option(min=0, max=100, help="PostgreSQL crash-restarts.")] = 1,
    timeout_ms: Annotated[int, typer.Option(min=10, max=60_000, help="Client timeout per attempt.")] = 2_000,
    seed: Annotated[int, typer.Option(help="Random seed for the operations.")] = 1,
) -> None:
    """Jepsen-style: random writes with retries under SIGKILLs and a PostgreSQL crash, then audit."""
    from wallet.bank_test import run_bank_test

    report = run_bank_test(
        clients=clients,
        operations=operations,
        users=users,
        server_kills=server_kills,
        postgres_restarts=postgres_restarts,
        timeout_s=timeout_ms / 1000,
        seed=seed,
    )
    typer.echo(report.render())
    if not report.ok:
        raise typer.Exit(code=1)
