"""Small helpers shared by the tests."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

import asyncpg
import httpx
import pytest

from wallet.services.verify import VerifyReport, verify_ledger


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def verify_books(database_url: str) -> VerifyReport:
    """`wallet verify`'s checks of the whole database, on a connection of their own."""
    conn = await asyncpg.connect(database_url)
    try:
        return await verify_ledger(conn)
    finally:
        await conn.close()


async def balance_of(client: httpx.AsyncClient, user_id: str, asset_code: str = "GOLD_COINS") -> int:
    response = await client.get(f"/api/v1/wallets/{user_id}/balance")
    assert response.status_code == 200, response.text
    by_asset = {b["asset_type"]: b["balance"] for b in response.json()["balances"]}
    return by_asset[asset_code]


async def ledger_counts(pool: asyncpg.Pool) -> tuple[int, int, int]:
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM transactions), (SELECT count(*) FROM ledger_entries),"
        " (SELECT count(*) FROM idempotency_keys)"
    )
    assert row is not None
    return row[0], row[1], row[2]


def new_key() -> str:
    return f"k-{uuid.uuid4().hex}"


async def post(http, kind: str, expect: int = 201, **body: Any) -> dict[str, Any]:
    response = await http.post(
        f"/api/v1/transactions/{kind}", headers={"Idempotency-Key": new_key()}, json=body
    )
    assert response.status_code == expect, response.text
    return response.json()


@dataclass
class Postings:
    """What `posting_without_pause` has posted so far."""

    count: int = 0


@asynccontextmanager
async def posting_without_pause(http, users: list[str], asset: str = "GOLD_COINS") -> AsyncIterator[Postings]:
    """Load for the background tasks' tests: each user spends 1 and tops up 1, again and again,
    until the block ends; then every write must have succeeded (a failed one fails the block)."""
    stop = asyncio.Event()
    posted = Postings()

    async def write(user: str) -> None:
        while not stop.is_set():
            await post(http, "spend", user_id=user, asset_type=asset, amount=1)
            await post(http, "topup", user_id=user, asset_type=asset, amount=1)
            posted.count += 2

    writers = [asyncio.create_task(write(user)) for user in users]
    try:
        yield posted
    except BaseException:
        stop.set()
        await asyncio.gather(*writers, return_exceptions=True)
        raise
    stop.set()
    await asyncio.gather(*writers)


async def asset_balance(http, user: str, asset: str) -> dict[str, Any]:
    response = await http.get(f"/api/v1/wallets/{user}/balance", params={"asset_type": asset})
    assert response.status_code == 200, response.text
    (only,) = response.json()["balances"]
    return only


async def waiting_on(pool, holder_pid: int, timeout_s: float = 30.0) -> list[int]:
    """The backends waiting for a lock backend `holder_pid` holds, as soon as there is one: how a
    test knows that a request or command it started is queued behind its lock."""
    query = "SELECT pid FROM pg_stat_activity WHERE $1::int = ANY(pg_blocking_pids(pid))"
    deadline = time.monotonic() + timeout_s
    while not (pids := [row["pid"] for row in await pool.fetch(query, holder_pid)]):
        assert time.monotonic() < deadline, f"nothing waited on backend {holder_pid} within {timeout_s} s"
        await asyncio.sleep(0.02)
    return pids


async def refused_by_check(conn: asyncpg.Connection, constraint: str, statement: str, *args: object) -> None:
    """`statement` fails on the CHECK constraint `constraint` (a pattern of its message); run in a
    transaction rolled back after, so a statement let through by mistake leaves nothing behind."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        with pytest.raises(asyncpg.exceptions.CheckViolationError, match=constraint):
            await conn.execute(statement, *args)
    finally:
        await transaction.rollback()


async def db_now(pool) -> datetime:
    now = await pool.fetchval("SELECT clock_timestamp()")
    assert isinstance(now, datetime)
    return now


async def wait_past(pool, instant: datetime) -> None:
    """Until the database's clock has passed `instant` (the clock expiry is judged by)."""
    while await db_now(pool) <= instant:
        await asyncio.sleep(0.05)


# --- the `wallet` command, in this process ----------------------------------------------------
#
# A `wallet` process spends about half a second of CPU importing before it does anything; the
# suite ran a few hundred. Where the process boundary is not what a test checks, the command runs
# here instead: the same Typer app with its one-line errors and exit codes (`wallet.cli.app`, as
# `python -m wallet` calls it), its settings read afresh from the environment given, on the test's
# database.
#
# `wallet serve` runs here only as far as the checks it makes before it installs its SIGTERM
# handler (the settings, its options, the port): a handler can only be installed from a process's
# main thread, so a serve that got further fails here with that traceback and never serves. A
# mistake found later (the database's) is checked on a `wallet serve` process of its own.


@dataclass(frozen=True)
class CliResult:
    """What `wallet ARGS` did, as subprocess.CompletedProcess has it."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class _PerThread(io.TextIOBase):
    """sys.stdout or sys.stderr while a command runs: the command's thread writes to a buffer of
    its own; any other thread (the test's event loop, a warning) where it wrote before."""

    def __init__(self, fallback: TextIO) -> None:
        self.fallback = fallback
        self.local = threading.local()

    @property
    def _target(self) -> TextIO:
        buffer: TextIO | None = getattr(self.local, "buffer", None)
        return self.fallback if buffer is None else buffer

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return self._target.write(text)

    def flush(self) -> None:
        self._target.flush()


_ONE_COMMAND_AT_A_TIME = threading.Lock()  # the environment and sys.stdout are the process's


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ is `env` inside (only the variables that differ are touched); restored after."""
    before = dict(os.environ)
    for name in before.keys() - env.keys():
        del os.environ[name]
    os.environ.update({k: v for k, v in env.items() if before.get(k) != v})
    try:
        yield
    finally:
        for name in os.environ.keys() - before.keys():
            del os.environ[name]
        os.environ.update({k: v for k, v in before.items() if os.environ.get(k) != v})


def wallet_cli(*args: str, env: dict[str, str] | None = None, inherit_wallet_env: bool = True) -> CliResult:
    """`wallet ARGS` run in this process (see above), with this process's environment (without its
    WALLET_* variables unless `inherit_wallet_env`) and `env` on top. Exit code, stdout and stderr
    as the process would have them: an exception the app lets through is its traceback on stderr
    and exit 1. Each command starts event loops of its own, so it runs in a thread; this call
    blocks: a test whose event loop must go on meanwhile awaits asyncio.to_thread(wallet_cli, ...)."""
    from wallet.cli import app
    from wallet.settings import get_settings

    environ = {k: v for k, v in os.environ.items() if inherit_wallet_env or not k.startswith("WALLET_")} | (
        env or {}
    )
    out, err = io.StringIO(), io.StringIO()
    returncode = 1

    def run() -> None:
        nonlocal returncode
        stdout.local.buffer, stderr.local.buffer = out, err
        try:
            app(args=list(args), prog_name="wallet")
            returncode = 0
        except SystemExit as exit_:
            if exit_.code is None or isinstance(exit_.code, int):
                returncode = exit_.code or 0
            else:
                print(exit_.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()

    with _ONE_COMMAND_AT_A_TIME, _environment(environ):
        saved = sys.stdout, sys.stderr, sys.excepthook  # Typer installs its own hook
        stdout, stderr = _PerThread(sys.stdout), _PerThread(sys.stderr)
        sys.stdout, sys.stderr = stdout, stderr
        get_settings.cache_clear()
        try:
            thread = threading.Thread(target=run, name=f"wallet {' '.join(args)}")
            thread.start()
            thread.join()
        finally:
            sys.stdout, sys.stderr, sys.excepthook = saved
            get_settings.cache_clear()  # the command's settings, not this process's
    return CliResult(args, returncode, out.getvalue(), err.getvalue())


def wallet_on(database_url: str, *args: str, env: dict[str, str] | None = None) -> CliResult:
    """`wallet ARGS` on the database at `database_url` (wallet_cli; `env` on top)."""
    return wallet_cli(*args, env={"WALLET_DATABASE_URL": database_url} | (env or {}))
