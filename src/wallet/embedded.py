"""The embedded default database: a real PostgreSQL server that ships as a Python wheel (pgserver).

Used when WALLET_DATABASE_URL is unset, so a fresh machine needs nothing but `pip install`. Data
lives in WALLET_DATA_DIR (default ./.wallet-data). pgserver runs the server as an unprivileged
user when started as root, and stops it when the last process using it exits. It listens on a
Unix socket only, inside the data directory.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

DATABASE_NAME = "wallet"


def start_embedded_postgres(data_dir: Path) -> str:
    """Starts (or joins) the embedded server and returns a URL to the `wallet` database."""
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    import pgserver  # imported here: only the embedded mode needs it

    pgdata = (data_dir / "pgdata").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE_NAME};")
    return f"postgresql://postgres@/{DATABASE_NAME}?host={pgdata}"
