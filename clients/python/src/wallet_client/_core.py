"""What the sync and async clients share: building each endpoint's request, parsing its answer,
and the retry policy. No I/O here: a client sends `Attempts.request()`, hands the response (or
the transport exception) to `Attempts.retry_delay()`, sleeps that long and sends again, or, when
it returns None, gets the result (or the exception) from `Attempts.finish()`.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx

from wallet_client.errors import (
    UnexpectedResponse,
    WalletAPIError,
    WalletConnectionError,
    error_class,
)
from wallet_client.models import (
    AssetType,
    Balances,
    BatchOperation,
    BatchResult,
    Health,
    Hold,
    HoldPage,
    Transaction,
    TransactionPage,
    User,
    UserPage,
)

__version__ = "0.1.0"

T = TypeVar("T")
log = logging.getLogger("wallet_client")

API = "/api/v1"
REPLAYED_HEADER = "Idempotent-Replayed"
IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how long to retry one logical call (every attempt sends the same request, with
    the same idempotency key).

    Retried: connection failures (refused, reset, the server closing without an answer), timeouts,
    and the statuses in `retry_statuses` (503: the service wrote nothing; 502 and 504: a proxy
    could not get an answer, which for a write is the same unknown as a timeout). With
    `retry_in_use`, also 409 `idempotency_key_in_use`: an earlier attempt with this key is still
    running, and the retry will replay its outcome. Never retried: any other 4xx (the same request
    would get the same answer) and 500 (a bug, not a transient state).

    Delays: full jitter, `uniform(0, min(backoff_max, backoff_base * 2**(retry - 1)))`; when the
    answer has `Retry-After`, that (capped at `retry_after_max`) plus the jitter. At most
    `max_attempts` attempts, and none starts after `total_timeout` seconds from the first; each
    attempt's own timeout is shortened to what is left of that budget.
    """

    max_attempts: int = 5
    total_timeout: float = 30.0
    backoff_base: float = 0.1
    backoff_max: float = 5.0
    retry_after_max: float = 10.0
    retry_statuses: frozenset[int] = frozenset({502, 503, 504})
    retry_in_use: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise _type_error("max_attempts", "an int", self.max_attempts)
        for name in ("total_timeout", "backoff_base", "backoff_max", "retry_after_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _type_error(name, "a number of seconds (int or float)", value)
        if not isinstance(self.retry_statuses, frozenset | set) or not all(
            isinstance(status, int) and not isinstance(status, bool) for status in self.retry_statuses
        ):
            raise _type_error("retry_statuses", "a frozenset of int statuses", self.retry_statuses)
        if not isinstance(self.retry_in_use, bool):
            raise _type_error("retry_in_use", "a bool", self.retry_in_use)
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if min(self.total_timeout, self.backoff_base, self.backoff_max, self.retry_after_max) < 0:
            raise ValueError("times must not be negative")
        if any(400 <= status < 500 for status in self.retry_statuses):
            raise ValueError("4xx statuses are never retried (the same request gets the same answer)")

    @classmethod
    def never(cls) -> RetryPolicy:
        """One attempt only."""
        return cls(max_attempts=1)

    def backoff(self, retry: int, rng: random.Random) -> float:
        """The jittered delay before retry number `retry` (1 for the second attempt)."""
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** min(retry - 1, 62))
        return rng.uniform(0.0, ceiling)


# Transport failures after which the same request may succeed: the connection could not be made
# or was lost (before, during or after the server's work: the idempotency key makes that safe),
# or an answer did not come in time. Not: UnsupportedProtocol, LocalProtocolError (our bug).
RETRYABLE_TRANSPORT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One logical call: the request every attempt sends, and how to read the answer."""

    method: str
    path: str
    parse: Callable[[Any, bool, int], T]  # (JSON body, replayed, status) -> result
    params: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    idempotency_key: str | None = None
    accept: frozenset[int] = frozenset()  # non-2xx statuses that are answers, not errors
    retry: bool = True


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def api_error(
    response: httpx.Response, *, idempotency_key: str | None, attempts: int, now: float
) -> WalletAPIError:
    """The typed exception for an error answer; a body that is not the service's error document
    (e.g. a proxy's HTML page) still gives a `WalletAPIError`, with code `http_<status>`."""
    status = response.status_code
    code, message, field_name = f"http_{status}", response.reason_phrase or "error", None
    try:
        detail = json.loads(response.content)["error"]
        if isinstance(detail.get("code"), str):
            code = detail["code"]
        if isinstance(detail.get("message"), str):
            message = detail["message"]
        if isinstance(detail.get("field"), str):
            field_name = detail["field"]
    except (ValueError, KeyError, TypeError, AttributeError):
        text = response.text.strip()
        if text:
            message = text[:200]
    return error_class(status, code)(
        status,
        code,
        message,
        field_name,
        idempotency_key=idempotency_key,
        replayed=response.headers.get(REPLAYED_HEADER, "").lower() == "true",
        retry_after=parse_retry_after(response.headers.get("Retry-After"), now),
        attempts=attempts,
    )


class Attempts(Generic[T]):
    """The retry loop of one call, without the I/O."""

    def __init__(
        self,
        call: Call[T],
        policy: RetryPolicy,
        *,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.call = call
        self.policy = policy if call.retry else RetryPolicy.never()
        self.timeout = timeout
        self.clock = clock
        self.wall_clock = wall_clock
        self.rng = rng or random.Random()
        self.count = 0
        self.deadline = clock() + self.policy.total_timeout

    def request(self) -> dict[str, Any]:
        """Keyword arguments for `httpx.Client.request` (or the async one) for the next attempt."""
        self.count += 1
        headers = {"Accept": "application/json"}
        if self.call.body is not None:
            headers["Content-Type"] = "application/json"
        if self.call.idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = self.call.idempotency_key
        timeout = max(0.05, min(self.timeout, self.deadline - self.clock()))
        return {
            "method": self.call.method,
            "url": self.call.path,
            "params": dict(self.call.params) or None,
            "content": self.call.body,
            "headers": headers,
            "timeout": timeout,
        }

    def retry_delay(self, outcome: httpx.Response | httpx.TransportError) -> float | None:
        """Seconds to wait before the next attempt, or None if this outcome is final."""
        retry_after: float | None = None
        if isinstance(outcome, httpx.TransportError):
            if not isinstance(outcome, RETRYABLE_TRANSPORT_ERRORS):
                return None
            reason = type(outcome).__name__
        elif outcome.status_code in self.policy.retry_statuses:
            retry_after = parse_retry_after(outcome.headers.get("Retry-After"), self.wall_clock())
            reason = f"status {outcome.status_code}"
        elif (
            self.policy.retry_in_use
            and self.call.idempotency_key is not None
            and outcome.status_code == 409
            and _error_code(outcome) == "idempotency_key_in_use"
        ):
            reason = "idempotency_key_in_use"
        else:
            return None
        if self.count >= self.policy.max_attempts:
            return None
        delay = self.policy.backoff(self.count, self.rng)
        if retry_after is not None:
            delay += min(retry_after, self.policy.retry_after_max)
        if self.clock() + delay >= self.deadline:
            return None
        log.info(
            "wallet_client retry %s %s after %s (attempt %d, key %s) in %.3f s",
            self.call.method,
            self.call.path,
            reason,
            self.count,
            self.call.idempotency_key,
            delay,
        )
        return delay

    def finish(self, outcome: httpx.Response | httpx.TransportError) -> T:
        """The result of the call, or its exception."""
        key = self.call.idempotency_key
        if isinstance(outcome, httpx.TransportError):
            raise WalletConnectionError(
                f"{self.call.method} {self.call.path}: no answer after {self.count} attempt(s): "
                f"{type(outcome).__name__}: {outcome}",
                attempts=self.count,
                idempotency_key=key,
            ) from outcome
        status = outcome.status_code
        if status >= 400 and status not in self.call.accept:
            raise api_error(outcome, idempotency_key=key, attempts=self.count, now=self.wall_clock())
        if not 200 <= status < 300 and status not in self.call.accept:
            raise UnexpectedResponse(f"{self.call.method} {self.call.path}: unexpected status {status}")
        try:
            document = json.loads(outcome.content)
        except ValueError:
            raise UnexpectedResponse(
                f"{self.call.method} {self.call.path}: answer {status} is not JSON"
            ) from None
        replayed = outcome.headers.get(REPLAYED_HEADER, "").lower() == "true"
        return self.call.parse(document, replayed, status)


def _error_code(response: httpx.Response) -> str | None:
    try:
        code = json.loads(response.content)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


# Request building, one function per endpoint. Each write gets its idempotency key here, once,
# so every attempt of the call sends the same one.
#
# Every argument is checked before anything is sent: a value of the wrong type raises TypeError
# naming the argument and what it takes; a value of the right type that cannot be right (an empty
# id, a naive datetime) raises ValueError.


def _type_error(name: str, expected: str, value: object) -> TypeError:
    return TypeError(f"{name} must be {expected}, got {type(value).__name__}")


def _str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise _type_error(name, "a str", value)
    return value


def _optional_str(value: object, name: str) -> str | None:
    return None if value is None else _str(value, name)


def _segment(value: object, name: str) -> str:
    """An id that goes into the path."""
    text = _str(value, name)
    if not text:
        raise ValueError(f"{name} must not be empty")
    return quote(text, safe="")


def _int(value: object, name: str, unit: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(name, f"an int ({unit})", value)
    return value


def _amount(value: object, name: str) -> int:
    return _int(value, name, "minor units")


def _time(value: object, name: str) -> str:
    if not isinstance(value, datetime):
        raise _type_error(name, "a datetime", value)
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime (the API needs an offset)")
    return value.isoformat()


def _metadata(value: object) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _type_error("metadata", "a mapping (a JSON object) or None", value)
    try:  # what json would say about one of its values, said about metadata
        json.dumps(value, allow_nan=False)
    except TypeError as exc:
        raise TypeError(f"metadata must hold JSON values only: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"metadata must hold JSON values only: {exc}") from None
    return value


def _key(idempotency_key: object) -> str:
    if idempotency_key is None:
        return str(uuid.uuid4())
    key = _str(idempotency_key, "idempotency_key")
    if not key:
        raise ValueError("idempotency_key must not be empty")
    return key


def _encode(body: Mapping[str, Any]) -> bytes:
    compact = {k: v for k, v in body.items() if v is not None}
    return json.dumps(compact, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def page_size(value: int | None) -> int | None:
    """The `page_size` of the `iter_*` methods (each page's `limit`)."""
    return None if value is None else _int(value, "page_size", "items per page")


def _page_params(limit: object, cursor: object) -> dict[str, str]:
    params: dict[str, str] = {}
    if limit is not None:
        params["limit"] = str(_int(limit, "limit", "items per page"))
    if cursor is not None:
        params["cursor"] = _str(cursor, "cursor")
    return params


def _transaction(document: Any, replayed: bool, status: int) -> Transaction:
    return Transaction.from_json(document, replayed=replayed)


def _hold(document: Any, replayed: bool, status: int) -> Hold:
    return Hold.from_json(document, replayed=replayed)


def _write(
    path: str, body: Mapping[str, Any], key: str | None, parse: Callable[[Any, bool, int], T]
) -> Call[T]:
    return Call("POST", path, parse, body=_encode(body), idempotency_key=_key(key))


def health() -> Call[Health]:
    # A 503 here is an answer (the database is unreachable), and a health check reports the
    # present, so it is neither an error nor retried.
    return Call("GET", "/health", lambda d, r, s: Health.from_json(d), accept=frozenset({503}), retry=False)


def asset_types() -> Call[list[AssetType]]:
    def parse(document: Any, replayed: bool, status: int) -> list[AssetType]:
        data = document.get("data") if isinstance(document, dict) else None
        if not isinstance(data, list):
            raise UnexpectedResponse("asset types: expected {'data': [...]}")
        return [AssetType.from_json(a) for a in data]

    return Call("GET", f"{API}/asset-types", parse)


def users(limit: int | None, cursor: str | None) -> Call[UserPage]:
    return Call(
        "GET", f"{API}/users", lambda d, r, s: UserPage.from_json(d), params=_page_params(limit, cursor)
    )


def create_user(user_id: str, name: str) -> Call[User]:
    # Not a ledger write: no idempotency key. Repeating it is not an error (200, created False),
    # so it is retried like a read.
    return Call(
        "POST",
        f"{API}/users",
        lambda d, r, s: User.from_json(d, created=s == 201),
        # The service stores names in Unicode NFC; sent so, too, so the request is what is stored.
        body=_encode(
            {"user_id": _str(user_id, "user_id"), "name": unicodedata.normalize("NFC", _str(name, "name"))}
        ),
    )


def balances(user_id: str, asset_type: str | None, as_of: datetime | None) -> Call[Balances]:
    params: dict[str, str] = {}
    if asset_type is not None:
        params["asset_type"] = _str(asset_type, "asset_type")
    if as_of is not None:
        params["as_of"] = _time(as_of, "as_of")
    return Call(
        "GET",
        f"{API}/wallets/{_segment(user_id, 'user_id')}/balance",
        lambda d, r, s: Balances.from_json(d),
        params=params,
    )


def history(
    user_id: str,
    *,
    limit: int | None,
    cursor: str | None,
    asset_type: str | None,
    type: str | None,
    from_time: datetime | None,
    to_time: datetime | None,
) -> Call[TransactionPage]:
    params = _page_params(limit, cursor)
    if asset_type is not None:
        params["asset_type"] = _str(asset_type, "asset_type")
    if type is not None:
        params["type"] = _str(type, "type")
    if from_time is not None:
        params["from"] = _time(from_time, "from_time")
    if to_time is not None:
        params["to"] = _time(to_time, "to_time")
    return Call(
        "GET",
        f"{API}/wallets/{_segment(user_id, 'user_id')}/transactions",
        lambda d, r, s: TransactionPage.from_json(d),
        params=params,
    )


def transaction(transaction_id: str) -> Call[Transaction]:
    return Call("GET", f"{API}/transactions/{_segment(transaction_id, 'transaction_id')}", _transaction)


def posting(
    kind: Literal["topup", "bonus", "spend"],
    user_id: str,
    asset_type: str,
    amount: int,
    *,
    description: str | None,
    metadata: Mapping[str, Any] | None,
    idempotency_key: str | None,
    expires_at: datetime | None = None,
    expires_in_seconds: int | None = None,
) -> Call[Transaction]:
    body: dict[str, Any] = {
        "user_id": _str(user_id, "user_id"),
        "asset_type": _str(asset_type, "asset_type"),
        "amount": _amount(amount, "amount"),
        "description": _optional_str(description, "description"),
        "metadata": _metadata(metadata),
    }
    # Only bonuses take an expiry; only sent when given, so other requests stay as they were.
    if expires_at is not None:
        body["expires_at"] = _time(expires_at, "expires_at")
    if expires_in_seconds is not None:
        body["expires_in_seconds"] = _int(expires_in_seconds, "expires_in_seconds", "seconds")
    return _write(f"{API}/transactions/{kind}", body, idempotency_key, _transaction)


def _operation(op: BatchOperation) -> dict[str, Any]:
    if not isinstance(op, BatchOperation):
        raise _type_error("each of operations", "a BatchOperation", op)
    return {
        k: v
        for k, v in {
            "type": op.type,
            "user_id": _str(op.user_id, "user_id"),
            "asset_type": _str(op.asset_type, "asset_type"),
            "amount": _amount(op.amount, "amount"),
            "to_user_id": _optional_str(op.to_user_id, "to_user_id"),
            "fee": _amount(op.fee, "fee") or None,
            "description": _optional_str(op.description, "description"),
            "metadata": _metadata(op.metadata),
        }.items()
        if v is not None
    }


def batch(operations: Sequence[BatchOperation], *, idempotency_key: str | None) -> Call[BatchResult]:
    if isinstance(operations, str | bytes | Mapping) or not isinstance(operations, Iterable):
        raise _type_error("operations", "a sequence of BatchOperation", operations)
    body = {"operations": [_operation(op) for op in operations]}
    return _write(
        f"{API}/transactions/batch",
        body,
        idempotency_key,
        lambda d, r, s: BatchResult.from_json(d, replayed=r),
    )


def transfer(
    from_user_id: str,
    to_user_id: str,
    asset_type: str,
    amount: int,
    *,
    fee: int,
    description: str | None,
    metadata: Mapping[str, Any] | None,
    idempotency_key: str | None,
) -> Call[Transaction]:
    body = {
        "from_user_id": _str(from_user_id, "from_user_id"),
        "to_user_id": _str(to_user_id, "to_user_id"),
        "asset_type": _str(asset_type, "asset_type"),
        "amount": _amount(amount, "amount"),
        "fee": _amount(fee, "fee") or None,
        "description": _optional_str(description, "description"),
        "metadata": _metadata(metadata),
    }
    return _write(f"{API}/transactions/transfer", body, idempotency_key, _transaction)


def reverse(
    transaction_id: str,
    *,
    amount: int | None,
    reason: str | None,
    metadata: Mapping[str, Any] | None,
    allow_negative: bool,
    idempotency_key: str | None,
) -> Call[Transaction]:
    if not isinstance(allow_negative, bool):
        raise _type_error("allow_negative", "a bool", allow_negative)
    body = {
        "amount": None if amount is None else _amount(amount, "amount"),
        "reason": _optional_str(reason, "reason"),
        "metadata": _metadata(metadata),
        "allow_negative": True if allow_negative else None,
    }
    return _write(
        f"{API}/transactions/{_segment(transaction_id, 'transaction_id')}/reverse",
        body,
        idempotency_key,
        _transaction,
    )


def place_hold(
    user_id: str,
    asset_type: str,
    amount: int,
    *,
    expires_in_seconds: int | None,
    description: str | None,
    metadata: Mapping[str, Any] | None,
    idempotency_key: str | None,
) -> Call[Hold]:
    body = {
        "user_id": _str(user_id, "user_id"),
        "asset_type": _str(asset_type, "asset_type"),
        "amount": _amount(amount, "amount"),
        "expires_in_seconds": None
        if expires_in_seconds is None
        else _int(expires_in_seconds, "expires_in_seconds", "seconds"),
        "description": _optional_str(description, "description"),
        "metadata": _metadata(metadata),
    }
    return _write(f"{API}/holds", body, idempotency_key, _hold)


def capture_hold(
    hold_id: str,
    *,
    amount: int | None,
    description: str | None,
    metadata: Mapping[str, Any] | None,
    idempotency_key: str | None,
) -> Call[Transaction]:
    body = {
        "amount": None if amount is None else _amount(amount, "amount"),
        "description": _optional_str(description, "description"),
        "metadata": _metadata(metadata),
    }
    return _write(f"{API}/holds/{_segment(hold_id, 'hold_id')}/capture", body, idempotency_key, _transaction)


def void_hold(hold_id: str, *, idempotency_key: str | None) -> Call[Hold]:
    return _write(f"{API}/holds/{_segment(hold_id, 'hold_id')}/void", {}, idempotency_key, _hold)


def hold(hold_id: str) -> Call[Hold]:
    return Call("GET", f"{API}/holds/{_segment(hold_id, 'hold_id')}", _hold)


def holds(
    user_id: str, *, status: Literal["open", "all"], limit: int | None, cursor: str | None
) -> Call[HoldPage]:
    params = _page_params(limit, cursor)
    if _str(status, "status") not in ("open", "all"):
        raise ValueError(f"status must be 'open' or 'all', got {status!r}")
    params["status"] = status
    return Call(
        "GET",
        f"{API}/wallets/{_segment(user_id, 'user_id')}/holds",
        lambda d, r, s: HoldPage.from_json(d),
        params=params,
    )


def client_headers(api_key: str | None, headers: Mapping[str, str] | None) -> dict[str, str]:
    result = {"User-Agent": f"wallet-client-python/{__version__}"}
    if api_key is not None:
        if not _str(api_key, "api_key"):
            raise ValueError("api_key must not be empty (None sends no key)")
        result["Authorization"] = f"Bearer {api_key}"
    if headers is not None and not isinstance(headers, Mapping):
        raise _type_error("headers", "a mapping of str to str or None", headers)
    result.update(headers or {})
    return result


def check_client(base_url: object, timeout: object, retry: object, rng: object) -> float:
    """The constructor's arguments, checked as the methods' are; returns `timeout` as a float."""
    if not isinstance(base_url, str | httpx.URL):
        raise _type_error("base_url", "a str (e.g. 'http://127.0.0.1:8000')", base_url)
    try:
        scheme = httpx.URL(base_url).scheme
    except httpx.InvalidURL as exc:
        raise ValueError(f"base_url is not a URL: {exc}") from None
    if scheme not in ("http", "https"):
        raise ValueError(
            f"base_url must start with http:// or https:// (e.g. 'http://127.0.0.1:8000'), got {str(base_url)!r}"
        )
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise _type_error("timeout", "a number of seconds (int or float)", timeout)
    if not 0 < timeout < float("inf"):
        raise ValueError(f"timeout must be a positive, finite number of seconds, got {timeout!r}")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise _type_error("retry", "a RetryPolicy or None", retry)
    if rng is not None and not isinstance(rng, random.Random):
        raise _type_error("rng", "a random.Random or None", rng)
    return float(timeout)


def check_transport(transport: object, kind: type) -> None:
    """`transport` is None or an instance of `kind` (httpx's sync or async base transport)."""
    if transport is not None and not isinstance(transport, kind):
        raise TypeError(f"transport must be an httpx.{kind.__name__} or None, got {type(transport).__name__}")
