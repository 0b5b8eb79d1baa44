"""Database URL forms. The service, the CLI and the migrations all connect with asyncpg, which
reads libpq-style URLs, several hosts included (`h1:p1,h2:p2/db?target_session_attrs=read-write`)."""

from __future__ import annotations


def asyncpg_url(database_url: str) -> str:
    """Accepts SQLAlchemy-style URLs too (`postgresql+asyncpg://`), as WALLET_DATABASE_URL did."""
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql://" + database_url[len(prefix) :]
    return database_url
