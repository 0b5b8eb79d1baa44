"""Database URL forms: libpq/asyncpg style for the service, SQLAlchemy style for Alembic."""

from __future__ import annotations


def sqlalchemy_url(database_url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+asyncpg://" + database_url[len(prefix) :]
    return database_url


def asyncpg_url(database_url: str) -> str:
    """Accepts SQLAlchemy-style URLs too, so one WALLET_DATABASE_URL serves both."""
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql://" + database_url[len(prefix) :]
    return database_url
