"""Exceptions become error answers here (`install_error_handlers`), and error statuses are declared
here for the OpenAPI document (`error_responses`); the statuses and the shape of an answer are
`wallet.api.error_response`'s. Database timeouts and outages become 503 (the write did not happen, retry with the same idempotency key);
anything unexpected is logged with its traceback and answered with a
bare 500 that reveals nothing.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from wallet.api.documents import DocumentResponse
from wallet.api.error_response import STATUS_BY_CODE, error_response
from wallet.api.json_body import MalformedBody
from wallet.api.schemas import ErrorOut
from wallet.api.write_bodies import MEMBER, WHOLE_MESSAGE
from wallet.domain import errors

log = structlog.get_logger("wallet.api")

_STATUS_TITLES = {
    400: "Malformed request",
    401: "Missing or invalid API key",
    403: "The API key lacks the scope, or its restrictions refuse the request",
    404: "Not found",
    405: "Method not allowed",
    408: "Request body too slow",
    409: "Refused by the state of the ledger",
    413: "Request body too large",
    422: "Invalid request",
    429: "Rate limit of the client, or of failed authentications from the address, reached; retry after Retry-After seconds",
    500: "Internal error",
    503: "Nothing was written; retry with the same idempotency key",
}


def codes_for(status: int) -> list[errors.Code]:
    return [code for code, s in STATUS_BY_CODE.items() if s == status]


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI declarations of error statuses, each listing the catalogue codes it carries."""
    return {
        s: {
            "model": ErrorOut,
            "description": _STATUS_TITLES[s]
            + ". Codes: "
            + "; ".join(f"`{c.code}`: {c.meaning}" for c in codes_for(s)),
        }
        for s in statuses
    }


async def _wallet_error(request: Request, exc: Exception) -> DocumentResponse:
    assert isinstance(exc, errors.WalletError)
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    return error_response(exc.code, exc.message, exc.field, headers)


def _field_of(loc: tuple[Any, ...]) -> str | None:
    """One format for field paths everywhere: `operations[1].amount`, as the services write them."""
    path = ""
    for part in loc:
        if part in ("body", "query", "path", "header"):
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or None


def _is_body(loc: Any) -> bool:
    return tuple(loc) == ("body",)


async def _validation_error(request: Request, exc: Exception) -> DocumentResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return error_response(errors.MALFORMED_JSON, "request body is not valid JSON")
    malformed = next((e["input"] for e in exc.errors() if isinstance(e.get("input"), MalformedBody)), None)
    if malformed is not None:
        if not malformed.utf8:
            return error_response(
                errors.MALFORMED_BODY, f"request body is not UTF-8 JSON: {malformed.reason}"
            )
        return error_response(errors.MALFORMED_JSON, f"request body is not valid JSON: {malformed.reason}")
    # FastAPI hands over the raw bytes of a body sent as another content type (or none).
    if any(_is_body(e.get("loc", ())) and isinstance(e.get("input"), bytes) for e in exc.errors()):
        sent = request.headers.get("content-type")
        return error_response(
            errors.MALFORMED_BODY,
            "request body must be JSON sent with Content-Type: application/json, not "
            + (f"{sent[:100]!r}" if sent else "without a Content-Type"),
        )
    field = _field_of(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid value"))
    refused = errors.CATALOGUE.get(str(first.get("type", "")))
    if refused is not None:
        # A configured limit, what PostgreSQL cannot store, or a rule between fields (located at
        # its model, naming the member it is about): wallet.api.write_bodies.refusal.
        context = first.get("ctx")
        context = context if isinstance(context, dict) else {}
        if context.get(MEMBER):
            field = _field_of((*first.get("loc", ()), context[MEMBER]))
        whole = bool(context.get(WHOLE_MESSAGE))
        return error_response(refused, message if whole else f"{field} {message}", field)
    if first.get("type") == "missing":
        message = "required (a JSON object)" if _is_body(first.get("loc", ())) else "field required"
    elif first.get("type") == "extra_forbidden":
        message = "unknown field"
    return error_response(errors.VALIDATION_ERROR, f"{field or 'request body'}: {message}", field)


_CODE_BY_HTTP_STATUS = {
    400: errors.MALFORMED_BODY,
    404: errors.NOT_FOUND,
    405: errors.METHOD_NOT_ALLOWED,
    413: errors.BODY_TOO_LARGE,
}


async def _http_error(request: Request, exc: Exception) -> DocumentResponse:
    """Starlette's own refusals (no such route, wrong method, unreadable body)."""
    assert isinstance(exc, StarletteHTTPException)
    code = _CODE_BY_HTTP_STATUS.get(exc.status_code)
    if code is None:
        log.warning("unexpected_http_error", path=request.url.path, status=exc.status_code)
        code = errors.MALFORMED_BODY
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    if code is errors.NOT_FOUND:
        message = "no such endpoint"
    return error_response(code, message, headers=getattr(exc, "headers", None))


async def _database_error(request: Request, exc: Exception) -> DocumentResponse:
    if isinstance(
        exc,
        (
            asyncpg.exceptions.LockNotAvailableError,
            asyncpg.exceptions.QueryCanceledError,
            asyncpg.exceptions.DeadlockDetectedError,
            asyncpg.exceptions.SerializationError,
        ),
    ):
        log.warning("database_busy", path=request.url.path, error=type(exc).__name__)
        return error_response(errors.BUSY, "the database is busy; nothing was written, retry")
    if isinstance(exc, asyncpg.exceptions.NumericValueOutOfRangeError):
        return error_response(errors.BALANCE_LIMIT_EXCEEDED, "the resulting balance is too large", "amount")
    if isinstance(exc, asyncpg.exceptions.DataError):
        # Class 22: the database refused a value (e.g. a NUL byte in a path parameter). Fields are
        # validated before they get here; this is the net under that validation.
        log.warning("data_error", path=request.url.path, error=type(exc).__name__)
        return error_response(errors.INVALID_REQUEST, "a value in the request is not acceptable")
    if isinstance(
        exc,
        (
            asyncpg.exceptions.CannotConnectNowError,
            asyncpg.exceptions.ConnectionDoesNotExistError,
            asyncpg.exceptions.AdminShutdownError,
            asyncpg.exceptions.TooManyConnectionsError,
            asyncpg.exceptions.InterfaceError,
            # A failover: the connection was lost (class 08), no host of a multi-host URL takes
            # writes yet (target_session_attrs), or this one just stopped taking them (25006).
            asyncpg.exceptions.PostgresConnectionError,
            asyncpg.exceptions.TargetServerAttributeNotMatched,
            asyncpg.exceptions.ReadOnlySQLTransactionError,
            asyncpg.exceptions.CrashShutdownError,
            # A connection left mid-operation by a lost server ("cannot switch to state ...").
            asyncpg.exceptions.InternalClientError,
            ConnectionError,
            OSError,
            TimeoutError,
        ),
    ):
        log.warning("database_unavailable", path=request.url.path, error=type(exc).__name__)
        await _renew_connections(request)
        return error_response(
            errors.DATABASE_UNAVAILABLE, "the database is unavailable; retry with the same idempotency key"
        )
    return await _unexpected_error(request, exc)


async def _renew_connections(request: Request) -> None:
    """After a lost connection every other one of the pool is suspect (the primary may have
    failed over): each is replaced, the idle ones at their next acquire, the busy ones when they
    are released. The next requests connect to whichever host now takes writes."""
    resources = getattr(request.app.state, "resources", None)
    pool = getattr(resources, "pool", None)
    if isinstance(pool, asyncpg.Pool):
        await pool.expire_connections()


async def _unexpected_error(request: Request, exc: Exception) -> DocumentResponse:
    log.error("unhandled_error", path=request.url.path, exc_info=exc)
    return error_response(errors.INTERNAL_ERROR, "internal error; it has been logged")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(errors.WalletError, _wallet_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for exc_class in (
        asyncpg.PostgresError,
        asyncpg.exceptions.InterfaceError,
        asyncpg.exceptions.InternalClientError,
        ConnectionError,
        OSError,
        TimeoutError,
    ):
        app.add_exception_handler(exc_class, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)
