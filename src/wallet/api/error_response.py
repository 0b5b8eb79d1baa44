"""The one place where outcomes become HTTP statuses, and the one shape of an error answer.

Every error has the same shape, `{"error": {"code", "message", "field"}}`, with a code from the
catalogue (`wallet.domain.errors`), and each code has exactly one status, in `STATUS_BY_CODE`.
A leaf of the API layer (it imports only the domain and `wallet.api.documents`, whose
DocumentResponse puts the answer in the documented key order), so that whatever answers an
error (the exception handlers, the body limit of the request middleware, a route) builds it here.
"""

from __future__ import annotations

from typing import Any

from wallet.api.documents import DocumentResponse
from wallet.domain import errors
from wallet.domain.rules import RETRY_AFTER_SECONDS

# The one mapping from catalogue codes to HTTP statuses. A test checks it covers the catalogue.
STATUS_BY_CODE: dict[errors.Code, int] = {
    errors.POSTED: 201,
    errors.APPLIED: 200,
    errors.MALFORMED_JSON: 400,
    errors.MALFORMED_BODY: 400,
    errors.IDEMPOTENCY_KEY_MISSING: 400,
    errors.IDEMPOTENCY_KEY_MALFORMED: 400,
    errors.UNAUTHENTICATED: 401,
    errors.FORBIDDEN: 403,
    errors.KEY_OPERATION_NOT_ALLOWED: 403,
    errors.KEY_ASSET_NOT_ALLOWED: 403,
    errors.KEY_AMOUNT_OVER_LIMIT: 403,
    errors.RATE_LIMITED: 429,
    errors.NOT_FOUND: 404,
    errors.USER_NOT_FOUND: 404,
    errors.ASSET_TYPE_NOT_FOUND: 404,
    errors.TRANSACTION_NOT_FOUND: 404,
    errors.HOLD_NOT_FOUND: 404,
    errors.WEBHOOK_NOT_FOUND: 404,
    errors.DEAD_LETTER_NOT_FOUND: 404,
    errors.METHOD_NOT_ALLOWED: 405,
    errors.INSUFFICIENT_FUNDS: 409,
    errors.BALANCE_LIMIT_EXCEEDED: 409,
    errors.USER_EXISTS: 409,
    errors.IDEMPOTENCY_KEY_IN_USE: 409,
    errors.HOLD_ALREADY_CAPTURED: 409,
    errors.HOLD_ALREADY_VOIDED: 409,
    errors.HOLD_EXPIRED: 409,
    errors.AMOUNT_EXCEEDS_HOLD: 409,
    errors.NOT_REVERSIBLE: 409,
    errors.AMOUNT_EXCEEDS_REVERSIBLE: 409,
    errors.AMOUNT_EXCEEDS_CLAWABLE: 409,
    errors.BODY_TIMEOUT: 408,
    errors.BODY_TOO_LARGE: 413,
    errors.VALIDATION_ERROR: 422,
    errors.LIMIT_EXCEEDED: 422,
    errors.INVALID_REQUEST: 422,
    errors.IDEMPOTENCY_KEY_REUSED: 422,
    errors.SAME_USER: 422,
    errors.INTERNAL_ERROR: 500,
    errors.BUSY: 503,
    errors.DATABASE_UNAVAILABLE: 503,
}


def status_of(code: errors.Code) -> int:
    """The HTTP status of an outcome the database or a service returned."""
    return STATUS_BY_CODE[code]


def error_body(code: errors.Code, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code.code, "message": message, "field": field}}


def error_response(
    code: errors.Code, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> DocumentResponse:
    status = STATUS_BY_CODE[code]
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
    elif status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS), **(headers or {})}
    return DocumentResponse(error_body(code, message, field), status_code=status, headers=headers)
