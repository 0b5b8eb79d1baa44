"""The client of the wallet API, one method per endpoint, in two faces: `AsyncWalletClient`
(async_client.py, the source) and `WalletClient` (client.py, which unasync writes from
async_client.py when the package is built: clients/python/unasync_client.py). Requests, parsing
and retries come from `wallet_client._core`; what differs between the faces (an attempt within its
timeout, the pause between attempts) from `_io_async` and `_io_sync`."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx

from wallet_client import _core, _io_async
from wallet_client._core import Attempts, Call, RetryPolicy
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

T = TypeVar("T")


class AsyncWalletClient:
    """Client of the wallet API (`WalletClient` blocks, `AsyncWalletClient` is for asyncio).

    `base_url` is the service root (`http://127.0.0.1:8000`). `timeout` bounds each attempt as a
    whole (seconds): connecting, sending, and the answer's headers and body in full, however
    slowly they trickle in; `retry` bounds the attempts of one call and their total time. Every write takes an
    optional `idempotency_key`; without one the client makes one (a UUID) for that call, and
    sends it on every retry of the call, so a retried write is applied at most once. Results of
    writes carry `replayed`. Errors raise `WalletAPIError` subclasses with the service's `code`;
    no answer after the retries raises `WalletConnectionError` (with the key, to try again later).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.timeout = _core.check_client(base_url, timeout, retry, rng)
        _core.check_transport(transport, httpx.AsyncBaseTransport)
        self.retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_core.client_headers(api_key, headers), transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncWalletClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _run(self, call: Call[T]) -> T:
        attempts = Attempts(call, self.retry, timeout=self.timeout, rng=self._rng)
        while True:
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = await _io_async.attempt(self._http, attempts.request())
            except httpx.TransportError as exc:
                outcome = exc
            delay = attempts.retry_delay(outcome)
            if delay is None:
                return attempts.finish(outcome)
            await _io_async.sleep(delay)

    # Service

    async def health(self) -> Health:
        """`GET /health`, once, without retries: `ok` is False while the database is unreachable."""
        return await self._run(_core.health())

    async def list_asset_types(self) -> list[AssetType]:
        return await self._run(_core.asset_types())

    # Users

    async def list_users(self, *, limit: int | None = None, cursor: str | None = None) -> UserPage:
        return await self._run(_core.users(limit, cursor))

    async def iter_users(self, *, page_size: int | None = None) -> AsyncIterator[User]:
        """Every user, following `next_cursor` page by page."""
        cursor: str | None = None
        while True:
            page = await self.list_users(limit=_core.page_size(page_size), cursor=cursor)
            for item in page.data:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def create_user(self, user_id: str, name: str) -> User:
        """Admin scope. Creating an existing user with the same name is not an error (`created`
        is False); with another name it is `Conflict` (`user_exists`)."""
        return await self._run(_core.create_user(user_id, name))

    # Wallets

    async def get_balances(
        self, user_id: str, *, asset_type: str | None = None, as_of: datetime | None = None
    ) -> Balances:
        """Balances of every asset (or one), now or as they were at `as_of` (an aware datetime)."""
        return await self._run(_core.balances(user_id, asset_type, as_of))

    async def get_history(
        self,
        user_id: str,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        asset_type: str | None = None,
        type: str | None = None,
        from_time: datetime | None = None,
        to_time: datetime | None = None,
    ) -> TransactionPage:
        """One page of the user's transactions, newest first, within [from_time, to_time)."""
        return await self._run(
            _core.history(
                user_id,
                limit=limit,
                cursor=cursor,
                asset_type=asset_type,
                type=type,
                from_time=from_time,
                to_time=to_time,
            )
        )

    async def iter_history(
        self,
        user_id: str,
        *,
        page_size: int | None = None,
        asset_type: str | None = None,
        type: str | None = None,
        from_time: datetime | None = None,
        to_time: datetime | None = None,
    ) -> AsyncIterator[Transaction]:
        """Every transaction of the user (newest first), fetching page after page."""
        cursor: str | None = None
        while True:
            page = await self.get_history(
                user_id,
                limit=_core.page_size(page_size),
                cursor=cursor,
                asset_type=asset_type,
                type=type,
                from_time=from_time,
                to_time=to_time,
            )
            for item in page.data:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # Transactions

    async def get_transaction(self, transaction_id: str) -> Transaction:
        return await self._run(_core.transaction(transaction_id))

    async def topup(
        self,
        user_id: str,
        asset_type: str,
        amount: int,
        *,
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Transaction:
        """Credit the user from SYSTEM_TREASURY (scope credit)."""
        return await self._run(
            _core.posting(
                "topup",
                user_id,
                asset_type,
                amount,
                description=description,
                metadata=metadata,
                idempotency_key=idempotency_key,
            )
        )

    async def bonus(
        self,
        user_id: str,
        asset_type: str,
        amount: int,
        *,
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        expires_at: datetime | None = None,
        expires_in_seconds: int | None = None,
    ) -> Transaction:
        """Credit the user from SYSTEM_PROMOTIONS (scope credit), into a `granted` lot that expires
        at `expires_at` or `expires_in_seconds` after posting (one or neither; neither: the
        asset's default)."""
        return await self._run(
            _core.posting(
                "bonus",
                user_id,
                asset_type,
                amount,
                description=description,
                metadata=metadata,
                idempotency_key=idempotency_key,
                expires_at=expires_at,
                expires_in_seconds=expires_in_seconds,
            )
        )

    async def spend(
        self,
        user_id: str,
        asset_type: str,
        amount: int,
        *,
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Transaction:
        """Debit the user into SYSTEM_REVENUE (scope spend); `InsufficientFunds` if not covered."""
        return await self._run(
            _core.posting(
                "spend",
                user_id,
                asset_type,
                amount,
                description=description,
                metadata=metadata,
                idempotency_key=idempotency_key,
            )
        )

    async def batch(
        self, operations: Sequence[BatchOperation], *, idempotency_key: str | None = None
    ) -> BatchResult:
        """Several top-ups, bonuses, spends and transfers atomically: all or none."""
        return await self._run(_core.batch(operations, idempotency_key=idempotency_key))

    async def transfer(
        self,
        from_user_id: str,
        to_user_id: str,
        asset_type: str,
        amount: int,
        *,
        fee: int = 0,
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Transaction:
        """Move credits between users; the sender also pays `fee` to SYSTEM_REVENUE (scope transfer)."""
        return await self._run(
            _core.transfer(
                from_user_id,
                to_user_id,
                asset_type,
                amount,
                fee=fee,
                description=description,
                metadata=metadata,
                idempotency_key=idempotency_key,
            )
        )

    async def reverse(
        self,
        transaction_id: str,
        *,
        amount: int | None = None,
        reason: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        allow_negative: bool = False,
        idempotency_key: str | None = None,
    ) -> Transaction:
        """Refund a spend or capture, or claw back a top-up or bonus; `amount` defaults to what
        is left (scope reverse; `allow_negative` needs admin)."""
        return await self._run(
            _core.reverse(
                transaction_id,
                amount=amount,
                reason=reason,
                metadata=metadata,
                allow_negative=allow_negative,
                idempotency_key=idempotency_key,
            )
        )

    # Holds

    async def place_hold(
        self,
        user_id: str,
        asset_type: str,
        amount: int,
        *,
        expires_in_seconds: int | None = None,
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Hold:
        """Reserve part of the available balance until captured, voided or expired (scope spend)."""
        return await self._run(
            _core.place_hold(
                user_id,
                asset_type,
                amount,
                expires_in_seconds=expires_in_seconds,
                description=description,
                metadata=metadata,
                idempotency_key=idempotency_key,
            )
        )

    async def capture_hold(
        self,
        hold_id: str,
        *,
        amount: int | None = None,
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Transaction:
        """Spend all (default) or part of a hold, once; the rest is released."""
        return await self._run(
            _core.capture_hold(
                hold_id,
                amount=amount,
                description=description,
                metadata=metadata,
                idempotency_key=idempotency_key,
            )
        )

    async def void_hold(self, hold_id: str, *, idempotency_key: str | None = None) -> Hold:
        """Release a hold without spending."""
        return await self._run(_core.void_hold(hold_id, idempotency_key=idempotency_key))

    async def get_hold(self, hold_id: str) -> Hold:
        return await self._run(_core.hold(hold_id))

    async def list_holds(
        self,
        user_id: str,
        *,
        status: Literal["open", "all"] = "open",
        limit: int | None = None,
        cursor: str | None = None,
    ) -> HoldPage:
        """The user's holds, newest first: open ones, or all."""
        return await self._run(_core.holds(user_id, status=status, limit=limit, cursor=cursor))

    async def iter_holds(
        self, user_id: str, *, status: Literal["open", "all"] = "open", page_size: int | None = None
    ) -> AsyncIterator[Hold]:
        cursor: str | None = None
        while True:
            page = await self.list_holds(
                user_id, status=status, limit=_core.page_size(page_size), cursor=cursor
            )
            for item in page.data:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor
