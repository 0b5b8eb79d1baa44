"""The one place where failures become HTTP responses.

Every error has the same shape, `{"error": {"code", "message", "field"}}`. Domain errors map to a
status by class; database timeouts and outages become 503 (the write did not happen, retry with
the same idempotency key); anything unexpected is logged with its traceback and answered with a
bare 500 that reveals nothing.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from wallet.api.schemas import ErrorOut
from wallet.domain import errors

log = structlog.get_logger("wallet.api")

STATUS_BY_ERROR: list[tuple[type[errors.WalletError], int]] = [
    (errors.IdempotencyKeyMissing, 400),
    (errors.Unauthenticated, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.InvalidRequest, 422),
    (errors.LimitExceeded, 422),
    (errors.Busy, 503),
]

# For route declarations, so the OpenAPI spec lists every error a route can answer.
ERROR_DESCRIPTIONS = {
    400: "Malformed JSON or a missing idempotency key",
    401: "Missing or invalid API key",
    403: "The API key lacks the scope",
    404: "Unknown user, asset type or transaction",
    409: "Insufficient funds, or a conflicting concurrent/duplicate request",
    413: "Request body too large",
    422: "Invalid field, exceeded limit, or idempotency key reused with another request",
    503: "Database busy or unavailable; nothing was written, retry with the same key",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorOut, "description": ERROR_DESCRIPTIONS[s]} for s in statuses}


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def error_response(
    status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message, field), status_code=status, headers=headers)


def status_for(exc: errors.WalletError) -> int:
    for error_class, status in STATUS_BY_ERROR:
        if isinstance(exc, error_class):
            return status
    return 500


async def _wallet_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.WalletError)
    status = status_for(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status == 503:
        headers = {"Retry-After": "1"}
    return error_response(status, exc.code, exc.message, exc.field, headers)


def _field_of(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return error_response(400, "malformed_json", "request body is not valid JSON")
    field = _field_of(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid value"))
    if first.get("type") == "missing":
        message = "field required"
    elif first.get("type") == "extra_forbidden":
        message = "unknown field"
    return error_response(422, "validation_error", f"{field or 'request'}: {message}", field)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {400: "malformed_body", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
        exc.status_code, "http_error"
    )
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 404:
        message = "no such endpoint"
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
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
        return error_response(
            503, "busy", "the database is busy; nothing was written, retry", headers={"Retry-After": "1"}
        )
    if isinstance(exc, asyncpg.exceptions.NumericValueOutOfRangeError):
        return error_response(409, "balance_limit_exceeded", "the resulting balance is too large", "amount")
    if isinstance(exc, asyncpg.exceptions.DataError):
        # Class 22: the database refused a value (e.g. a NUL byte in a path parameter). Fields are
        # validated before they get here; this is the net under that validation.
        log.warning("data_error", path=request.url.path, error=type(exc).__name__)
        return error_response(422, "invalid_request", "a value in the request is not acceptable")
    if isinstance(
        exc,
        (
            asyncpg.exceptions.CannotConnectNowError,
            asyncpg.exceptions.ConnectionDoesNotExistError,
            asyncpg.exceptions.AdminShutdownError,
            asyncpg.exceptions.TooManyConnectionsError,
            asyncpg.exceptions.InterfaceError,
            ConnectionError,
            OSError,
            TimeoutError,
        ),
    ):
        log.warning("database_unavailable", path=request.url.path, error=type(exc).__name__)
        return error_response(
            503,
            "database_unavailable",
            "the database is unavailable; retry with the same idempotency key",
            headers={"Retry-After": "1"},
        )
    return await _unexpected_error(request, exc)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled_error", path=request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error; it has been logged")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(errors.WalletError, _wallet_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for exc_class in (
        asyncpg.PostgresError,
        asyncpg.exceptions.InterfaceError,
        ConnectionError,
        OSError,
        TimeoutError,
    ):
        app.add_exception_handler(exc_class, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)
