"""Applies the Alembic migrations shipped inside the package."""

from __future__ import annotations

import asyncio
from importlib.resources import files

from alembic import command
from alembic.config import Config

HEAD = "head"


def _config(database_url: str, revision: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("wallet.db").joinpath("migrations")))
    config.attributes["database_url"] = database_url
    # The posting functions in db/sql/functions are written for the newest schema only.
    config.attributes["install_functions"] = revision == HEAD
    return config


def upgrade(database_url: str, revision: str = HEAD) -> None:
    """Blocking; run it outside an event loop (env.py starts its own)."""
    command.upgrade(_config(database_url, revision), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Blocking, as `upgrade`. The live functions are not touched (they are written for head):
    whoever downgrades installs the functions of that revision's time themselves."""
    command.downgrade(_config(database_url, revision), revision)


def upgrade_to_head(database_url: str) -> None:
    upgrade(database_url, HEAD)


async def upgrade_to_head_async(database_url: str) -> None:
    await asyncio.to_thread(upgrade, database_url, HEAD)
