"""The WatchReferrals change feed outlives a database that drops its connections: it must
keep trying to listen (watchers poll meanwhile), since a feed task that ended would fail
liveness and restart the pod."""
import asyncio

import asyncpg
import pytest

from services.referral.entrypoints import watch


@pytest.mark.parametrize("error", [
    asyncpg.InterfaceError("connection is closed"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
], ids=lambda e: type(e).__name__)
async def test_the_feed_retries_after_a_lost_connection(monkeypatch, error):
    attempts = []
    listening = asyncio.Event()

    class Conn:
        closed = False

        def is_closed(self):
            return self.closed

        async def add_listener(self, channel, callback):
            listening.set()

        def terminate(self):
            self.closed = True

        async def close(self):
            self.closed = True

    async def connect(dsn, timeout):
        attempts.append(dsn)
        if len(attempts) == 1:
            raise error
        return Conn()

    monkeypatch.setattr(watch.asyncpg, "connect", connect)
    monkeypatch.setattr(watch, "RETRY_SECONDS", 0.01)
    feed = watch.ChangeFeed("postgresql://db/x", "referral")
    task = asyncio.create_task(feed.run())
    waiter = asyncio.ensure_future(listening.wait())
    try:
        done, _ = await asyncio.wait({task, waiter}, timeout=2, return_when=asyncio.FIRST_COMPLETED)
        assert task not in done, f"the feed ended: {task.exception()!r}"
        assert waiter in done and len(attempts) == 2
    finally:
        for t in (task, waiter):
            t.cancel()
        await asyncio.gather(task, waiter, return_exceptions=True)
