"""Applies the Alembic migrations shipped inside the package."""

from __future__ import annotations

import asyncio
from importlib.resources import files

from alembic import command
from alembic.config import Config


def _config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("wallet.db").joinpath("migrations")))
    config.attributes["database_url"] = database_url
    return config


def upgrade_to_head(database_url: str) -> None:
    """Blocking; run it outside an event loop (env.py starts its own)."""
    command.upgrade(_config(database_url), "head")


async def upgrade_to_head_async(database_url: str) -> None:
    await asyncio.to_thread(upgrade_to_head, database_url)
