"""Batcher: who waits with whom, and whose error is whose."""
import asyncio

import asyncpg
import pytest

from services.common.batching import Batcher


class Store:
    def __init__(self, fail_batch_on: set[int] = frozenset(), fail_item: set[int] = frozenset()) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.fail_batch_on = fail_batch_on
        self.fail_item = fail_item
        self.gate = asyncio.Event()
        self.gate.set()

    async def many(self, key: str, items: list[int]) -> list:
        await self.gate.wait()
        if self.fail_batch_on & set(items):
            raise ValueError("one of them is bad")
        self.batches.append((key, list(items)))
        return [i * 10 for i in items]

    async def one(self, key: str, item: int) -> int:
        await self.gate.wait()
        if item in self.fail_item:
            raise ValueError(f"bad {item}")
        self.batches.append((key, [item]))
        return item * 10


async def test_callers_waiting_for_a_batch_in_flight_go_together_in_the_next():
    store = Store()
    writes = Batcher("t1", store.many, store.one)
    store.gate.clear()
    first = asyncio.create_task(writes.submit("a", 1))
    await asyncio.sleep(0)          # the lone caller's write starts at once ...
    rest = [asyncio.create_task(writes.submit("a", i)) for i in range(2, 7)]
    await asyncio.sleep(0)
    store.gate.set()                # ... and the five that queued behind it go as one batch
    assert await first == 10
    assert await asyncio.gather(*rest) == [20, 30, 40, 50, 60]
    assert store.batches == [("a", [1]), ("a", [2, 3, 4, 5, 6])]


async def test_keys_are_written_apart_and_batches_are_capped():
    store = Store()
    writes = Batcher("t2", store.many, store.one, max_batch=3)
    store.gate.clear()
    calls = [asyncio.create_task(writes.submit(k, i)) for i, k in enumerate("aabbbbb")]
    await asyncio.sleep(0)
    store.gate.set()
    assert await asyncio.gather(*calls) == [0, 10, 20, 30, 40, 50, 60]
    by_key = {}
    for key, items in store.batches:
        by_key.setdefault(key, []).append(items)
    assert by_key["a"] == [[0, 1]]
    assert by_key["b"] == [[2, 3, 4], [5, 6]]


async def test_a_bad_item_fails_only_its_own_caller():
    store = Store(fail_batch_on={4}, fail_item={4})
    writes = Batcher("t3", store.many, store.one)
    store.gate.clear()
    first = asyncio.create_task(writes.submit("a", 1))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(writes.submit("a", i)) for i in range(2, 6)]
    await asyncio.sleep(0)
    store.gate.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert results[:3] == [10, 20, 30] and results[4] == 50
    assert isinstance(results[3], ValueError) and str(results[3]) == "bad 4"
    # The failed batch was written again one item at a time.
    assert store.batches == [("a", [1]), ("a", [2]), ("a", [3]), ("a", [5])]


async def test_a_lost_database_fails_the_whole_batch_at_once():
    calls = []

    async def many(key, items):
        calls.append(items)
        raise asyncpg.exceptions.ConnectionDoesNotExistError("gone")

    async def one(key, item):
        calls.append([item])
        raise asyncpg.exceptions.ConnectionDoesNotExistError("gone")

    writes = Batcher("t4", many, one)
    tasks = [asyncio.create_task(writes.submit("a", i)) for i in range(4)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncpg.exceptions.ConnectionDoesNotExistError) for r in results)
    # Not retried item by item: the database is gone for all of them.
    assert calls == [[0, 1, 2, 3]]
    # The writer is gone too, and the next caller gets a new one.
    with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
        await writes.submit("a", 9)
    assert calls[-1] == [9]


async def test_a_caller_cancelled_before_its_turn_writes_nothing():
    store = Store()
    writes = Batcher("t5", store.many, store.one)
    store.gate.clear()
    first = asyncio.create_task(writes.submit("a", 1))
    await asyncio.sleep(0)
    gone = asyncio.create_task(writes.submit("a", 2))
    kept = asyncio.create_task(writes.submit("a", 3))
    await asyncio.sleep(0)
    gone.cancel()
    store.gate.set()
    assert await first == 10 and await kept == 30
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert store.batches == [("a", [1]), ("a", [3])]
