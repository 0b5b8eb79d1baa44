"""The batching behind group commit and shared balance reads: a lone request is served at once,
requests arriving while every slot is busy go together in the next batch (never more than
max_size), and a batch that fails unexpectedly fails its own requests, not the batcher."""

from __future__ import annotations

import asyncio

import pytest

from wallet.services.batching import Batcher


class Recorder(Batcher[int, int]):
    def __init__(self, *, max_size: int, max_in_flight: int) -> None:
        super().__init__(max_size=max_size, max_in_flight=max_in_flight)
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()

    async def serve(self, batch: list[tuple[int, asyncio.Future[int]]]) -> None:
        self.batches.append([item for item, _ in batch])
        await self.release.wait()
        if any(item < 0 for item, _ in batch):
            raise RuntimeError("a negative item")
        for item, future in batch:
            future.set_result(item * 10)


async def test_a_lone_request_is_served_at_once_and_later_ones_wait_together():
    batcher = Recorder(max_size=3, max_in_flight=1)
    first = batcher.submit(1)
    await asyncio.sleep(0)
    assert batcher.batches == [[1]]  # started without waiting for company
    later = [batcher.submit(n) for n in (2, 3, 4, 5)]
    await asyncio.sleep(0)
    assert batcher.batches == [[1]]  # the one slot is busy: they queue
    batcher.release.set()
    assert await first == 10
    assert await asyncio.gather(*later) == [20, 30, 40, 50]
    assert batcher.batches == [[1], [2, 3, 4], [5]]  # in arrival order, at most max_size each
    await batcher.drain()


async def test_batches_in_flight_are_bounded():
    batcher = Recorder(max_size=1, max_in_flight=2)
    futures = [batcher.submit(n) for n in range(5)]
    await asyncio.sleep(0)
    assert batcher.batches == [[0], [1]]
    batcher.release.set()
    assert await asyncio.gather(*futures) == [0, 10, 20, 30, 40]


async def test_a_failing_batch_fails_its_requests_and_the_next_batch_is_served():
    batcher = Recorder(max_size=2, max_in_flight=1)
    busy = batcher.submit(0)  # holds the slot, so the next two share a batch
    shared = [batcher.submit(-1), batcher.submit(7)]
    batcher.release.set()
    assert await busy == 0
    results = await asyncio.gather(*shared, return_exceptions=True)
    assert batcher.batches == [[0], [-1, 7]]
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await batcher.submit(8) == 80
    await batcher.drain()
    with pytest.raises(RuntimeError):
        await batcher.submit(-2)
