"""The embedded default database: a real PostgreSQL server that ships as a Python wheel (pgserver).

Used when WALLET_DATABASE_URL is unset, so a fresh machine needs nothing but `pip install`. Data
lives in WALLET_DATA_DIR (default ./.wallet-data). pgserver runs the server as an unprivileged
user when started as root. It listens on a Unix socket only, inside the data directory.

Lifetime is ours, not pgserver's: whoever starts the server stops it when done, and a command that
finds it already running (say `wallet verify` beside `wallet serve`) leaves it running. pgserver's
own reference counting relies on atexit, which a SIGTERM'd process never reaches.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DATABASE_NAME = "wallet"

# What a command says, on one line, when it needs the embedded server and cannot have it: in the
# image (which installs no `embedded` extra), on a machine without it, or where the data directory
# cannot be written. The usual cause is a deployment that forgot the database URL.
NO_DATABASE = (
    "error: WALLET_DATABASE_URL is not set; set it to the PostgreSQL to use "
    "(postgresql://user:password@host:5432/wallet){reason}"
)


def _postmaster_running(pgdata: Path) -> bool:
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


@contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Starts (or joins) the embedded server; yields a URL to its `wallet` database."""
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    try:
        import pgserver  # imported here: only the embedded mode needs it
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]
    except ImportError:
        raise SystemExit(
            NO_DATABASE.format(reason=" (the embedded PostgreSQL, pip extra `embedded`, is not installed)")
        ) from None

    pgdata = (data_dir / "pgdata").resolve()
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SystemExit(
            NO_DATABASE.format(
                reason=f" (or WALLET_DATA_DIR to a writable folder: {exc.strerror}: {data_dir})"
            )
        ) from None
    started_here = not _postmaster_running(pgdata)
    server = pgserver.get_server(pgdata, cleanup_mode=None)  # type: ignore[attr-defined]
    try:
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
        if "(1 row)" not in exists:
            server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        yield f"postgresql://postgres@/{DATABASE_NAME}?host={pgdata}"
    finally:
        if started_here and _postmaster_running(pgdata):
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=server.system_user)
