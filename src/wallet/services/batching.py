"""Requests that arrive while earlier ones are being served go together, in the next batch.

The pattern behind group commit (writes) and shared balance reads: a worker keeps a queue of
pending requests; when one arrives and fewer than `max_in_flight` batches are running, everything
queued (up to `max_size`) starts as one batch at once, so a lone request waits for nothing; when
every slot is busy, requests queue up and the next batch takes them together. The busier the
worker, the larger the batches, with no timer anywhere (TigerBeetle's batching, inside the
service). A subclass says what one batch does, and must settle the future of each of its items.

A batch runs in a task of its own, in the context (contextvars) of its first request as it was
when that request was queued: what it does is traced under that request's span, never under
whichever earlier batch happened to start it.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    def __init__(self, *, max_size: int, max_in_flight: int) -> None:
        assert max_size >= 1
        assert max_in_flight >= 1
        self._max_size = max_size
        self._max_in_flight = max_in_flight
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._contexts: list[contextvars.Context] = []  # of each queued request, in step with _queue
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, item: Item) -> asyncio.Future[Result]:
        """Queues `item`; the future is settled by the batch that takes it."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._contexts.append(contextvars.copy_context())
        self._start_batches()
        return future

    def _start_batches(self) -> None:
        while self._queue and self._in_flight < self._max_in_flight:
            batch, self._queue = self._queue[: self._max_size], self._queue[self._max_size :]
            context, self._contexts = self._contexts[0], self._contexts[self._max_size :]
            self._in_flight += 1
            task = asyncio.create_task(self._run(batch), context=context)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            await self.serve(batch)
        except BaseException as exc:
            for _, future in batch:  # whatever serve left unsettled
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._in_flight -= 1
            self._start_batches()

    async def serve(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        """Serves one batch, settling each item's future (a cancelled one is left alone)."""
        raise NotImplementedError

    async def drain(self) -> None:
        """Waits for every batch in progress (shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
