"""The SQL shipped in the package: versioned migration scripts and the re-installable functions."""

from __future__ import annotations

from importlib.resources import files


def read_sql(name: str) -> str:
    return files("wallet.db").joinpath("sql", name).read_text(encoding="utf-8")


def function_files() -> list[str]:
    """db/sql/functions/*.sql in name order (each CREATE OR REPLACE, so safe to run again)."""
    folder = files("wallet.db").joinpath("sql", "functions")
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    return [folder.joinpath(name).read_text(encoding="utf-8") for name in names]
