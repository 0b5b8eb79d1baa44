"""Operator mistakes as one line: what the `wallet` command prints instead of a traceback.

A bad setting, a database URL that is not one, a database that cannot be reached, does not exist,
refuses the login or is not migrated, a port that is already served: `wallet` prints
`error: <what is wrong>` on stderr and exits non-zero. Exit codes:

- 2 (as for a usage error): the command line or a setting is wrong; nothing was tried.
- 1: the command could not do its work (the database or the port said no).

The database is checked before a command uses it; should it go away while the command runs (a
restart, a terminated backend, a statement or lock timeout), that is one line too. Anything else
is a bug, and still shows its traceback.
"""

from __future__ import annotations

import re
import socket
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError
from pydantic_settings import SettingsError

CONFIGURATION = 2  # the command line or a setting is wrong
RUNTIME = 1  # the database or the port refused


class OperatorError(Exception):
    """A mistake in how `wallet` was run or configured; `message` is one line."""

    def __init__(self, message: str, exit_code: int = RUNTIME) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())  # one line, whatever the cause's text held
        self.exit_code = exit_code


def env_name(field: str) -> str:
    return f"WALLET_{field.upper()}"


def settings_problem(exc: ValidationError | SettingsError) -> OperatorError:
    """Names each bad `WALLET_*` variable and what is wrong with it (never its value: some are
    secrets)."""
    if isinstance(exc, SettingsError):  # a complex setting (JSON) that does not parse
        match = re.search(r'field "(\w+)"', str(exc))
        name = env_name(match.group(1)) if match else "a WALLET_* setting"
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        return OperatorError(f"{name} is not valid JSON{cause}", CONFIGURATION)
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        field, *inner = [str(part) for part in error["loc"]] or ["?"]
        where = env_name(field) + (f" ({'.'.join(inner)})" if inner else "")
        message = error["msg"].removeprefix("Value error, ")  # a validator's own words
        problems.append(f"{where}: {message}")
    return OperatorError("; ".join(problems), CONFIGURATION)


def redacted(url: str) -> str:
    """`url` without its password (in the user part or as a `password=` parameter), for
    messages. A string that is not scheme://... is not shown at all: where a password sits in it
    cannot be known."""
    if "://" not in url:
        return "(not shown: not a URL)"
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{netloc.rsplit('@', 1)[1]}"
        query = re.sub(r"(?i)\b(password=)[^&]*", r"\1***", parts.query)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "(not shown: not a URL)"


def connect_problem(exc: BaseException, where: str, connect_timeout_ms: int) -> OperatorError:
    """What a failed connect to the database at `where` (a description, without password) says
    to the operator. `exc` is what asyncpg raised from connecting."""
    import asyncpg

    if isinstance(exc, asyncpg.ClientConfigurationError | ValueError | OverflowError):
        return OperatorError(f"{where} is not a usable PostgreSQL URL: {exc}", CONFIGURATION)
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return OperatorError(f"{exc} ({where})")
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidPasswordError):
        reason = f"the login was refused: {exc}"
    elif isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        reason = f"the server refused: {exc}"
    elif isinstance(exc, ConnectionRefusedError):
        reason = "connection refused (is PostgreSQL running there?)"
    elif isinstance(exc, socket.gaierror):
        reason = f"unknown host ({exc.strerror})"
    elif isinstance(exc, TimeoutError):
        reason = f"no answer within {connect_timeout_ms} ms (WALLET_DB_CONNECT_TIMEOUT_MS)"
    elif isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
    else:
        reason = str(exc) or type(exc).__name__
    return OperatorError(f"cannot connect to {where}: {reason}")


def database_stopped(exc: BaseException) -> OperatorError | None:
    """The one line for a command the database stopped while it ran (its connection lost, its
    backend terminated, a statement cancelled), or None when `exc` is something else. Looks
    through the causes: Alembic reports asyncpg's errors wrapped in SQLAlchemy's."""
    import asyncpg

    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, asyncpg.OperatorInterventionError):  # class 57: shutdown, cancel
            return OperatorError(f"the database stopped the command: {seen}")
        if isinstance(seen, asyncpg.LockNotAvailableError):
            return OperatorError(f"the database stopped the command: {seen} (WALLET_DB_LOCK_TIMEOUT_MS)")
        if isinstance(seen, asyncpg.PostgresConnectionError | ConnectionError):
            return OperatorError(f"lost the connection to the database: {seen or type(seen).__name__}")
        seen = seen.__cause__ or seen.__context__
    return None
