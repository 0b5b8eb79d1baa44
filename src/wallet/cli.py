"""The `wallet` command: serve, migrate, seed, verify, audit, expire, report, keys, prune-idempotency,
prune-events, holds.

Every command uses WALLET_DATABASE_URL when it is set, and the embedded PostgreSQL in
WALLET_DATA_DIR when it is not.

An operator's mistake (a bad setting, a database that cannot be used, a port already served)
is one line, `error: ...` on stderr, and a non-zero exit, never a traceback
(wallet.operator_errors). Contradictory flags (`--demo --reference-only`) are a usage error.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from typer.core import TyperCommand, TyperOption

from wallet.domain.rules import Scope
from wallet.operator_errors import (
    OperatorError,
    connect_problem,
    database_stopped,
    redacted,
    settings_problem,
)
from wallet.settings import Settings, get_settings

# Every scope a key can have, for the help text (from the one enumeration, so it cannot drift).
SCOPE_NAMES = ", ".join(scope.value for scope in list(Scope)[:-1]) + f" or {list(Scope)[-1].value}"

if TYPE_CHECKING:
    import asyncpg

    from wallet.services.api_keys import KeyInfo

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class _Command(TyperCommand):
    """Refuses an on/off flag given both ways (`--demo --reference-only`) instead of letting the
    last one win."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # Any: typer's own click's Context
        given = set()
        for arg in args:
            if arg == "--":
                break
            given.add(arg.split("=", 1)[0])
        for param in self.params:
            if isinstance(param, TyperOption) and param.is_bool_flag and param.secondary_opts:
                on, off = given & set(param.opts), given & set(param.secondary_opts)
                if on and off:
                    raise typer.BadParameter(f"{min(on)} and {min(off)} contradict each other", ctx, param)
        return list(super().parse_args(ctx, args))


class _Typer(typer.Typer):
    """Every command refuses contradictory flags, and an OperatorError ends it with one line."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except OperatorError as exc:
            _err(f"error: {exc.message}")
            sys.exit(exc.exit_code)
        except Exception as exc:
            stopped = database_stopped(exc)  # after the check: the server went away, or stopped us
            if stopped is None:
                raise  # a bug: its traceback
            _err(f"error: {stopped.message}")
            sys.exit(stopped.exit_code)


app = _Typer(add_completion=False, no_args_is_help=True, help=__doc__)
keys_app = _Typer(no_args_is_help=True, help="Create, list, rotate and revoke API keys.")
app.add_typer(keys_app, name="keys")


def _print_version(value: bool) -> None:
    if value:
        from wallet import __version__

        typer.echo(f"wallet {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Internal wallet service."""


DEMO_KEY_FILE = "demo-api-key"
DEMO_SCOPES = ["read", "credit", "spend", "admin"]


def _settings() -> Settings:
    """The settings, or an OperatorError naming each bad WALLET_* variable."""
    try:
        return get_settings()
    except (ValidationError, SettingsError) as exc:
        raise settings_problem(exc) from None


@contextmanager
def _database(
    settings: Settings, *, create: bool = False, migrated: bool = True, wait: bool = False
) -> Iterator[tuple[str, bool]]:
    """The URL to use, and whether it is the embedded server (started, and stopped, if needed).

    Checked before the command uses it: it must accept a connection (with `wait`, after retrying
    one that is not up yet for WALLET_DB_STARTUP_WAIT_MS, as at a container's start) and, when
    `migrated`, have this version's newest migration; otherwise an OperatorError says what is
    wrong. Without WALLET_DATABASE_URL only a command that may `create` it starts an embedded
    database that does not exist yet (the others would only find it empty)."""
    if settings.database_url:
        where = f"WALLET_DATABASE_URL={redacted(settings.database_url)}"
        _check_database(settings, settings.database_url, where, migrated=migrated, wait=wait)
        yield settings.database_url, False
        return
    from wallet.embedded import embedded_postgres

    data_dir = settings.data_dir
    where = f"the embedded database in {data_dir} (WALLET_DATABASE_URL is not set)"
    if not create and not (data_dir / "pgdata" / "PG_VERSION").exists():
        raise OperatorError(
            f"WALLET_DATABASE_URL is not set and there is no embedded database in {data_dir} "
            "(WALLET_DATA_DIR): set WALLET_DATABASE_URL, or create one with `wallet migrate`"
        )
    with ExitStack() as stack:
        try:
            url = stack.enter_context(embedded_postgres(data_dir))
        except OSError as exc:
            raise OperatorError(f"cannot start {where}: {exc}") from None
        _check_database(settings, url, where, migrated=migrated, wait=False)  # it is up: we started it
        yield url, True


def _check_database(settings: Settings, url: str, where: str, *, migrated: bool, wait: bool) -> None:
    import asyncpg

    try:
        revision = asyncio.run(_schema_revision(settings, url, wait))
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, ValueError, OverflowError) as exc:
        problem = connect_problem(exc, where, settings.db_connect_timeout_ms)
        if wait and settings.db_startup_wait_ms and isinstance(exc, OSError | TimeoutError):
            problem.message += f" (retried for {settings.db_startup_wait_ms} ms: WALLET_DB_STARTUP_WAIT_MS)"
        raise problem from None
    known, head = _migrations()
    if revision is not None and revision not in known:  # migrate could not go anywhere from there
        raise OperatorError(
            f"{where} is at migration {revision}, which this version of wallet does not know (its newest "
            f"is {head}): a newer wallet migrated it; run that version"
        )
    if not migrated:
        return
    if revision is None:
        raise OperatorError(f"{where} has no wallet tables: run `wallet migrate` first")
    if revision != head:
        raise OperatorError(
            f"{where} is at migration {revision}, this version of wallet needs {head}: run `wallet migrate`"
        )


async def _schema_revision(settings: Settings, url: str, wait: bool) -> str | None:
    """The database's Alembic revision (None: never migrated)."""
    from wallet.db.pool import connection, wait_for_database

    if wait:
        await wait_for_database(settings, url)
    async with connection(settings, url) as conn:
        if await conn.fetchval("SELECT to_regclass('alembic_version')") is None:
            return None
        revision = await conn.fetchval("SELECT version_num FROM alembic_version")
    return None if revision is None else str(revision)


def _migrations() -> tuple[set[str], str]:
    """Every revision this version of wallet ships, and the newest."""
    from importlib.resources import files

    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(files("wallet.db").joinpath("migrations")))
    head = script.get_current_head()
    assert head is not None
    return {revision.revision for revision in script.walk_revisions()}, head


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

    settings = _settings()
    # A container may start before its database: wait for it (WALLET_DB_STARTUP_WAIT_MS).
    with _database(settings, create=True, migrated=False, wait=True) as (url, _):
        # Under a session lock (several instances may migrate at once), so not through a
        # transaction-mode pooler: on WALLET_DIRECT_DATABASE_URL when one is set.
        upgrade_to_head(settings.session_database_url(url))
        asyncio.run(_sync_lot_policies(url))
    _err("migrations applied")


@app.command("role-settings")
def role_settings() -> None:
    """Store the session settings (lock_timeout, statement_timeout, ...) on the connecting role in
    this database, for WALLET_DB_STARTUP_PARAMETERS=0 (pgbouncer in transaction mode refuses them
    as startup parameters). Run it again after changing WALLET_DB_*_TIMEOUT_MS."""
    from wallet.db.pool import role_settings_sql
    from wallet.db.urls import asyncpg_url

    settings = _settings()

    async def apply(url: str) -> int:
        import asyncpg

        conn = await asyncpg.connect(
            asyncpg_url(url), timeout=settings.db_connect_timeout_ms / 1000, statement_cache_size=0
        )
        try:
            for sql in role_settings_sql(settings):
                await conn.execute(sql)
            return len(role_settings_sql(settings))
        finally:
            await conn.close()

    if settings.database_url:
        # Straight to the database: a server connection a pooler opened before this keeps the
        # old settings, so this command should open none through it.
        settings = settings.model_copy(
            update={"database_url": settings.session_database_url(settings.database_url)}
        )
    with _database(settings, migrated=False) as (url, _):
        count = asyncio.run(apply(url))
    _err(f"{count} session settings stored on the role; new connections get them")


async def _sync_lot_policies(url: str) -> None:
    from wallet.db.pool import connection
    from wallet.services.lots import sync_policies

    async with connection(_settings(), url) as conn:
        await sync_policies(conn, _settings())


async def _seed(url: str, demo: bool) -> None:
    from wallet.db.pool import connection
    from wallet.services.seed import seed_demo_data, seed_reference_data

    async with connection(_settings(), url) as conn:
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
    with _database(_settings()) as (url, _):
        asyncio.run(_seed(url, demo))
    _err("seed data in place")


async def _verify(url: str, jobs: int) -> bool:
    from wallet.db.pool import connection
    from wallet.services.verify import verify_ledger

    settings = _settings()
    async with AsyncExitStack() as stack:
        conn = await stack.enter_async_context(connection(settings, url))

        async def connect() -> asyncpg.Connection:
            return await stack.enter_async_context(connection(settings, url))

        report = await verify_ledger(
            conn, query_timeout_ms=settings.audit_query_timeout_ms, connect=connect, jobs=jobs
        )
    typer.echo(report.render())
    return report.clean


@app.command()
def verify(
    jobs: Annotated[
        int,
        typer.Option(
            min=1,
            max=32,
            help="Connections that check chunks at once, all in one snapshot (the database's cores are the limit).",
        ),
    ] = 3,
) -> None:
    """Recompute every balance and every hash chain from the ledger; exit 1 with a report if anything disagrees."""
    with _database(_settings()) as (url, _):
        clean = asyncio.run(_verify(url, jobs))
    if not clean:
        raise typer.Exit(code=1)


def _keys_call(action: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Runs `action` on a connection to the configured database; a refusal exits 2 with its message."""
    from wallet.db.pool import connection
    from wallet.domain.errors import WalletError

    async def run(url: str) -> T:
        async with connection(_settings(), url) as conn:
            return await action(conn)

    try:
        with _database(_settings()) as (url, _):
            return asyncio.run(run(url))
    except WalletError as exc:
        _err(f"error: {exc.message}")
        raise typer.Exit(code=2) from None


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who the key is for, e.g. the calling service.")],
    scope: Annotated[list[str], typer.Option(help=f"{SCOPE_NAMES}; repeatable.")],
    asset: Annotated[
        list[str] | None, typer.Option(help="Restrict to these asset types; repeatable. Default: any.")
    ] = None,
    operation: Annotated[
        list[str] | None,
        typer.Option(
            help="Restrict to these operations (topup, bonus, spend, transfer, hold, capture, void, "
            "reverse); repeatable. Default: whatever the scopes allow."
        ),
    ] = None,
    max_amount: Annotated[
        int | None, typer.Option(help="Largest amount (minor units) per operation. Default: none.")
    ] = None,
    rate_limit_rps: Annotated[
        float | None,
        typer.Option(help="This key's requests per second (0 = unlimited). Default: WALLET_RATE_LIMIT_RPS."),
    ] = None,
    rate_limit_burst: Annotated[
        int | None, typer.Option(help="This key's burst. Default: WALLET_RATE_LIMIT_BURST.")
    ] = None,
) -> None:
    """Create an API key and print it alone on stdout (it is stored only as a hash)."""
    from wallet.services.api_keys import KeyRestrictions, RateLimitOverride, create_api_key, parse_operations

    def create(conn: asyncpg.Connection) -> Awaitable[str]:
        restrictions = KeyRestrictions(
            asset_codes=frozenset(asset) if asset else None,
            operations=parse_operations(operation or []),
            max_amount_minor=max_amount,
        )
        limit = RateLimitOverride(rps=rate_limit_rps, burst=rate_limit_burst)
        return create_api_key(conn, name, scope, restrictions=restrictions, rate_limit=limit)

    typer.echo(_keys_call(create))


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per key.")] = False,
    active: Annotated[bool, typer.Option(help="Only keys that are not revoked.")] = False,
) -> None:
    """List API keys: id, client, name, prefix, scopes, restrictions, created, last used, state."""
    from wallet.domain.documents import ordered
    from wallet.services.api_keys import list_api_keys

    keys = _keys_call(lambda conn: list_api_keys(conn, include_revoked=not active))
    if as_json:
        for key in keys:
            typer.echo(json.dumps(ordered(_key_json(key))))
        return
    header = (
        "ID",
        "CLIENT",
        "NAME",
        "PREFIX",
        "SCOPES",
        "RESTRICTIONS",
        "RATE",
        "CREATED",
        "LAST USED",
        "STATE",
    )
    rows = [header] + [
        (
            str(k.id),
            str(k.client_id),
            k.name,
            k.prefix,
            ",".join(k.scopes),
            k.restrictions.describe(),
            "-" if k.rate_limit.rps is None else f"{k.rate_limit.rps:g}/s,{k.rate_limit.burst or '-'}",
            _when(k.created_at),
            _when(k.last_used_at),
            k.state + (f" {_when(k.revoked_at or k.expires_at)}" if k.state != "active" else ""),
        )
        for k in keys
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _key_json(key: KeyInfo) -> dict[str, object]:
    return {
        "id": key.id,
        "client_id": key.client_id,
        "name": key.name,
        "prefix": key.prefix,
        "scopes": list(key.scopes),
        "allowed_asset_types": sorted(key.restrictions.asset_codes) if key.restrictions.asset_codes else None,
        "allowed_operations": sorted(key.restrictions.operations) if key.restrictions.operations else None,
        "max_amount": key.restrictions.max_amount_minor,
        "rate_limit_rps": key.rate_limit.rps,
        "rate_limit_burst": key.rate_limit.burst,
        "created_at": key.created_at.isoformat(),
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "state": key.state,
    }


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="The key's id or prefix (wk_ and 8 characters), as listed.")],
) -> None:
    """Revoke an API key (effective within WALLET_AUTH_CACHE_TTL_MS). Never takes the secret."""
    from wallet.services.api_keys import revoke_api_key

    revoked = _keys_call(lambda conn: revoke_api_key(conn, key))
    if revoked is None:
        _err(f"key {key} was already revoked")
        raise typer.Exit(code=1)
    _err(f"revoked key {revoked.id} ({revoked.name}, {revoked.prefix})")


@keys_app.command("rotate")
def keys_rotate(
    key: Annotated[str, typer.Argument(help="The key's id or prefix (wk_ and 8 characters), as listed.")],
    overlap_seconds: Annotated[
        int, typer.Option(min=0, help="How long the old key keeps working (seconds).")
    ] = 24 * 3600,
) -> None:
    """Create a new key for the same client (same name, scopes, restrictions, rate limit) and print
    it alone on stdout; the old key stops after the overlap. Idempotency keys carry over."""
    from wallet.services.api_keys import rotate_api_key

    rotation = _keys_call(lambda conn: rotate_api_key(conn, key, overlap_seconds))
    _err(
        f"new key {rotation.new_key.id} ({rotation.new_key.prefix}) for client {rotation.new_key.client_id}; "
        f"key {rotation.old_key.id} ({rotation.old_key.prefix}) works until {_when(rotation.old_key.expires_at)}"
    )
    typer.echo(rotation.token)


PRUNE_IDEMPOTENCY_SQL = """
DELETE FROM idempotency_keys k
 WHERE coalesce(k.created_at, (SELECT t.created_at FROM transactions t WHERE t.id = k.transaction_id LIMIT 1))
       < now() - make_interval(hours => $1)
"""


async def _prune(url: str, hours: int) -> int:
    from wallet.db.pool import connection

    async with connection(_settings(), url) as conn, conn.transaction():
        # One scan of the table: no index on the records' age (migration 0013; every posting wrote
        # to one, and once pruning had freed pages the BRIN index of 0012 no longer narrowed it).
        # A posted write's record is as old as its transaction (found by its key).
        result = await conn.execute(PRUNE_IDEMPOTENCY_SQL, hours)
    return int(result.split()[-1])


@app.command("prune-idempotency")
def prune_idempotency() -> None:
    """Delete stored idempotency keys older than WALLET_IDEMPOTENCY_RETENTION_HOURS."""
    settings = _settings()
    with _database(settings) as (url, _):
        deleted = asyncio.run(_prune(url, settings.idempotency_retention_hours))
    _err(f"deleted {deleted} idempotency keys older than {settings.idempotency_retention_hours} h")


async def _prune_events(url: str, hours: int, batch: int, max_batches: int) -> int:
    from wallet.db.pool import connection
    from wallet.services.events import prune_events

    async with connection(_settings(), url) as conn:
        return await prune_events(conn, hours, batch=batch, max_batches=max_batches)


@app.command("prune-events")
def prune_events_command(
    older_than_hours: Annotated[
        int | None,
        typer.Option(min=1, max=24 * 3650, help="Default WALLET_EVENT_RETENTION_HOURS (168)."),
    ] = None,
    max_batches: Annotated[
        int,
        typer.Option(min=1, max=1_000_000, help="Statements per run, WALLET_EVENT_PRUNE_BATCH events each."),
    ] = 1_000,
) -> None:
    """Delete change events older than the retention, oldest first (never one a webhook endpoint
    has not delivered or given up on yet)."""
    settings = _settings()
    hours = older_than_hours or settings.event_retention_hours
    with _database(settings) as (url, _):
        deleted = asyncio.run(_prune_events(url, hours, settings.event_prune_batch, max_batches))
    _err(f"deleted {deleted} events older than {hours} h")


async def _demo_key_in_db(url: str, saved: str | None) -> str:
    """`saved` if it is still an active key, else a new demo key."""
    from wallet.db.pool import connection
    from wallet.services.api_keys import create_api_key, is_active_api_key

    async with connection(_settings(), url) as conn:
        if saved and await is_active_api_key(conn, saved):
            return saved
        return await create_api_key(conn, "demo", DEMO_SCOPES)


def _demo_key(url: str, key_file: Path) -> str:
    """The embedded demo's API key: reused across restarts while it is still valid."""
    saved = key_file.read_text().strip() if key_file.exists() else None
    token = asyncio.run(_demo_key_in_db(url, saved))
    if token != saved:
        key_file.write_text(token + "\n")
        key_file.chmod(0o600)
    return token


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Default WALLET_HOST (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Default WALLET_PORT (8000).")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
    access_log: Annotated[
        bool | None,
        typer.Option(help="One structured line per request. Default WALLET_ACCESS_LOG (on)."),
    ] = None,
) -> None:
    """Run the HTTP service. Without WALLET_DATABASE_URL: start the embedded PostgreSQL, migrate,
    seed demo data and print a demo API key."""
    import uvicorn

    from wallet import serving

    settings = _settings()
    host = host or settings.host
    port = port or settings.port
    try:  # before anything starts: a second service on the port would share it (SO_REUSEPORT)
        serving.ensure_port_free(host, port)
    except OSError as exc:
        raise OperatorError(serving.bind_problem(host, port, exc)) from None
    _raise_system_exit_on_sigterm()
    if access_log is not None:  # the workers read their settings from the environment
        os.environ["WALLET_ACCESS_LOG"] = "1" if access_log else "0"
        get_settings.cache_clear()
    # The embedded database is migrated here; one given by URL must be already.
    # (Waiting for it first, as the workers would: a container may start before its database.)
    with _database(settings, create=True, migrated=bool(settings.database_url), wait=True) as (url, embedded):
        if embedded:
            from wallet.db.migrate import upgrade_to_head  # Alembic: half a second of imports

            upgrade_to_head(url)
            # Before the demo's bonuses, so they get their asset's default expiry as with `wallet
            # migrate` then `wallet seed` (the workers write the policies again at start).
            asyncio.run(_sync_lot_policies(url))
            asyncio.run(_seed(url, demo=True))
            token = _demo_key(url, settings.data_dir / DEMO_KEY_FILE)
            os.environ["WALLET_DATABASE_URL"] = url
            get_settings.cache_clear()
            base = f"http://{host}:{port}"
            print(
                f"\nWallet service (embedded PostgreSQL in {settings.data_dir.resolve()})\n"
                f"  URL:      {base}\n  Swagger:  {base}/docs\n  ReDoc:    {base}/redoc\n"
                f"  Console:  {base}/console\n"
                f"  API key:  {token}\n\n"
                f"  curl -H 'Authorization: Bearer {token}' {base}/api/v1/wallets/user_001/balance\n",
                file=sys.stderr,
                flush=True,
            )
        serving.serve(  # one socket per worker (see wallet.serving)
            uvicorn.Config(
                "wallet.api.app:create_app",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                access_log=False,  # the service writes its own structured line (wallet.api.observe)
                log_level=settings.log_level.lower(),
                timeout_graceful_shutdown=10,
                limit_concurrency=settings.max_connections_per_worker,
                http=serving.HTTP_PROTOCOL,  # uvicorn's own, one write per response
            ),
            heartbeat_timeout_s=settings.worker_heartbeat_timeout_s,
        )


holds_app = _Typer(no_args_is_help=True, help="Holds maintenance.")
app.add_typer(holds_app, name="holds")


async def _release_expired(url: str, max_accounts: int) -> int:
    from wallet.db.pool import connection

    async with connection(_settings(), url) as conn:
        swept = await conn.fetchval("SELECT wallet_sweep_expired_holds($1)", max_accounts)
    assert isinstance(swept, int)
    return swept


@holds_app.command("release-expired")
def holds_release_expired(
    max_accounts: Annotated[int, typer.Option(min=1, max=1_000_000, help="Accounts per run.")] = 10_000,
) -> None:
    """Mark expired holds 'expired' and release them (`wallet serve` also does this periodically)."""
    with _database(_settings()) as (url, _):
        swept = asyncio.run(_release_expired(url, max_accounts))
    _err(f"released expired holds of {swept} accounts")


async def _expire(url: str, max_accounts: int) -> tuple[int, int]:
    from wallet.db.pool import create_pool
    from wallet.services.lots import expire_due, sync_policies

    settings = _settings()
    pool = await create_pool(settings, url)
    try:
        await sync_policies(pool, settings)
        run = await expire_due(pool, settings, max_accounts)
    finally:
        await pool.close()
    return run.accounts, run.expired_minor


@app.command()
def expire(
    max_accounts: Annotated[
        int, typer.Option(min=1, max=10_000_000, help="Accounts visited at most (each lot expires once).")
    ] = 1_000_000,
) -> None:
    """Move the unspent remainder of every expired credit lot to breakage (`wallet serve` also does
    this periodically). Safe to run twice, or in two processes at once."""
    with _database(_settings()) as (url, _):
        accounts, expired_minor = asyncio.run(_expire(url, max_accounts))
    _err(f"expired {expired_minor} minor units on {accounts} accounts")


async def _roll_up(url: str) -> tuple[int, int]:
    from wallet.db.pool import create_pool
    from wallet.services.rollup import roll_up

    settings = _settings()
    pool = await create_pool(settings, url)
    try:
        rolled = await roll_up(pool, settings, take_turns=True)
        through_seq = await pool.fetchval("SELECT through_seq FROM rollup_checkpoint")
    finally:
        await pool.close()
    return rolled, through_seq


@app.command("roll-up")
def roll_up_command() -> None:
    """Bring the reports' per-day totals up to date (`wallet serve` also does this every
    WALLET_ROLLUP_INTERVAL_MS): for a ledger no service runs on, or with the task turned off.
    Transactions younger than WALLET_AUDIT_SETTLE_MS wait. Safe in two processes at once."""
    with _database(_settings()) as (url, _):
        rolled, through_seq = asyncio.run(_roll_up(url))
    _err(f"rolled up {rolled} transactions; the totals now cover every transaction up to seq {through_seq}")


report_app = _Typer(no_args_is_help=True, help="Reports read from the ledger.")
app.add_typer(report_app, name="report")


async def _liabilities(
    url: str, as_of: datetime | None, from_: datetime | None, to: datetime | None
) -> dict[str, object]:
    from wallet.db.pool import create_pool, replica_lag_s
    from wallet.services.lots import ReportPeriod, liability_report

    settings = _settings()
    # A report may be as stale as the replica: read from WALLET_READ_DATABASE_URL when set.
    pool = await create_pool(settings, settings.read_database_url or url)
    try:
        if settings.read_database_url:
            _err(f"read from WALLET_READ_DATABASE_URL, {await replica_lag_s(pool)} s behind the primary")
        return await liability_report(pool, ReportPeriod.resolve(as_of, from_, to))
    finally:
        await pool.close()


def _utc(value: datetime | None) -> datetime | None:
    """Typer parses ISO times without a zone; the report's times are UTC."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


_TIME_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f"]


@report_app.command("liabilities")
def report_liabilities(
    output_format: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    as_of: Annotated[
        datetime | None, typer.Option(formats=_TIME_FORMATS, help="Outstanding as of (UTC). Default now.")
    ] = None,
    from_: Annotated[
        datetime | None,
        typer.Option("--from", formats=_TIME_FORMATS, help="Period start (UTC). Default: as_of's month."),
    ] = None,
    to: Annotated[
        datetime | None,
        typer.Option(formats=_TIME_FORMATS, help="Period end, exclusive (UTC). Default as_of."),
    ] = None,
) -> None:
    """What users hold (purchased: deferred revenue; granted) and the period's flows, per asset."""
    from wallet.domain.documents import ordered
    from wallet.domain.errors import WalletError
    from wallet.services.lots import report_csv

    if output_format not in ("csv", "json"):
        raise typer.BadParameter("must be csv or json", param_hint="--format")
    with _database(_settings()) as (url, _):
        try:
            report = asyncio.run(_liabilities(url, _utc(as_of), _utc(from_), _utc(to)))
        except WalletError as exc:
            raise typer.BadParameter(exc.message, param_hint=f"--{exc.field}") from None
    typer.echo(
        report_csv(report) if output_format == "csv" else json.dumps(ordered(report), indent=2), nl=False
    )
    if output_format == "json":
        typer.echo()
