"""Scratch databases for the tools (benchmarks, plan reports) and their tests: one place that
names a database in a server URL, creates one afresh (empty or from a template) and drops some.

Names are quoted; they come from the tools' own constants or checked options, never from a
request."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import typer

# The options of the plan reports (tools.index_plans, tools.as_of_plans) that load a scratch
# database of their own, keep it or not, and report on it.
ServerUrlOption = Annotated[
    str, typer.Option(help="A PostgreSQL server; the scratch database is created there.")
]
KeepOption = Annotated[bool, typer.Option(help="Keep the scratch database (and reuse it next time).")]
ScratchNameOption = Annotated[str, typer.Option(help="The scratch database's name.")]
SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def with_database(url: str, name: str) -> str:
    """The same server URL (hosts, options) with another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def recreate_database(admin_url: str, name: str, *, template: str | None = None) -> None:
    """Drops `name` if it exists (its sessions closed) and creates it again: empty, or a copy of
    `template`."""
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        copy = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{copy}')
    finally:
        await admin.close()


async def ensure_database(admin_url: str, name: str, *, reuse: bool) -> bool:
    """Creates `name` unless it exists and `reuse` is set (then it is kept as it is). Returns
    whether it was created (empty)."""
    admin = await asyncpg.connect(admin_url)
    try:
        if reuse and await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
    finally:
        await admin.close()
    await recreate_database(admin_url, name)
    return True


async def drop_databases(admin_url: str, *names: str) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
