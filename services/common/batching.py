"""Batching: concurrent callers' statements go to the database together.

A durable commit costs the same for one row as for fifty (a WAL flush, a round trip, the
locks a transaction holds to its end), and under load it is the commit, not the rows,
that a write path waits on (group commit); a read costs a round trip, a wake-up of the
server process and a turn of this event loop, whatever it reads. `Batcher` queues each
caller's item under a key; one task per key runs whatever has queued as one statement,
while the next batch gathers. There is no timer: a lone caller is written at once, and batches grow only
when callers are already waiting for the one in flight, so the latency a caller pays is
at most one batch ahead of it.

The batch function answers each item separately. When the batch as a whole fails on
something one item could have caused, `Batcher` runs the items one by one so that
only that item's caller sees the error; when the database cannot be reached, every
caller of the batch gets that error at once.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from prometheus_client import Histogram

from services.common.db import UNAVAILABLE_ERRORS

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")

# What a batch function answers for each item, in order: a result or the item's own error.
Outcome = R | BaseException


BATCH_SIZE = Histogram("db_batch_size", "Callers served by one statement, per batch.", ("batcher",),
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128))


class Batcher(Generic[K, T, R]):
    def __init__(self, name: str, run_many: Callable[[K, list[T]], Awaitable[list]],
                 run_one: Callable[[K, T], Awaitable[R]], *, max_batch: int = 64) -> None:
        self._sizes = BATCH_SIZE.labels(name)
        self._run_many = run_many
        self._run_one = run_one
        self._max_batch = max_batch
        self._queues: dict[K, list[tuple[T, asyncio.Future]]] = {}
        self._runners: dict[K, asyncio.Task] = {}

    async def submit(self, key: K, item: T) -> R:
        future = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, []).append((item, future))
        if key not in self._runners:
            self._runners[key] = asyncio.create_task(self._drain(key))
        # A caller cancelled before its item is taken leaves nothing written (the runner
        # skips done futures); once taken, the write commits or not with its batch.
        return await future

    async def _drain(self, key: K) -> None:
        try:
            while True:
                queue = self._queues.get(key)
                if not queue:
                    return
                taken = [(item, fut) for item, fut in queue[:self._max_batch] if not fut.done()]
                del queue[:self._max_batch]
                if taken:
                    await self._run(key, taken)
        except asyncio.CancelledError:
            for _, fut in self._queues.pop(key, []):
                fut.cancel()
            raise
        finally:
            self._runners.pop(key, None)
            if not self._queues.get(key):
                self._queues.pop(key, None)
            elif key not in self._runners:
                # Items queued while this runner was failing on its way out: a new runner takes them.
                self._runners[key] = asyncio.create_task(self._drain(key))

    async def _run(self, key: K, taken: list[tuple[T, asyncio.Future]]) -> None:
        self._sizes.observe(len(taken))
        items = [item for item, _ in taken]
        try:
            if len(items) == 1:
                outcomes: list = [await _outcome(self._run_one(key, items[0]))]
            else:
                try:
                    outcomes = await self._run_many(key, items)
                except UNAVAILABLE_ERRORS:
                    raise
                except Exception:  # noqa: BLE001 - one item may have failed the batch: find which
                    outcomes = [await _outcome(self._run_one(key, item)) for item in items]
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch learns of it
            cancelled = isinstance(exc, asyncio.CancelledError)
            for _, fut in taken:
                if not fut.done():
                    fut.cancel() if cancelled else fut.set_exception(exc)
            if cancelled:
                raise
            return
        for (_, fut), outcome in zip(taken, outcomes, strict=True):
            if fut.done():
                continue
            if isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)


async def _outcome(call: Awaitable[R]) -> Outcome:
    try:
        return await call
    except UNAVAILABLE_ERRORS:
        raise
    except Exception as exc:  # noqa: BLE001 - the item's own error, handed to its caller
        return exc
