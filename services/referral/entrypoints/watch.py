"""The live side of WatchReferrals: one LISTEN connection per process wakes every
watcher when a change-log row commits; watchers also poll, so a lost notification
(or a lost listener) only delays, never drops, a change."""
from __future__ import annotations

import asyncio

import asyncpg

from services.common import db
from services.common.logging import get_logger

log = get_logger(__name__)

# Between attempts to listen again while PostgreSQL does not answer (watchers poll meanwhile).
RETRY_SECONDS = 2.0


class ChangeFeed:
    def __init__(self, dsn: str, schema: str, poll_seconds: float = 1.0) -> None:
        self._dsn = dsn
        self._channel = f"{schema}_referral_changes"
        self.poll_seconds = poll_seconds
        self._event = asyncio.Event()
        self._conn: asyncpg.Connection | None = None

    def ticket(self) -> asyncio.Event:
        """Take before reading, wait after: a change committed in between still wakes."""
        return self._event

    async def wait(self, ticket: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(ticket.wait(), timeout=self.poll_seconds)
        except asyncio.TimeoutError:
            pass

    def _wake(self, *_args) -> None:
        fired, self._event = self._event, asyncio.Event()
        fired.set()

    async def run(self) -> None:
        while True:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(self._dsn, timeout=5)
                    await self._conn.add_listener(self._channel, self._wake)
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                await self.close()
                raise
            # db.UNAVAILABLE_ERRORS too: a dropped connection raises InterfaceError and the
            # like, and the feed must outlive them (watchers poll meanwhile). A feed task that
            # ended would fail liveness and restart the pod over a database blip.
            except (OSError, asyncpg.PostgresError, asyncio.TimeoutError, *db.UNAVAILABLE_ERRORS) as exc:
                log.warning("change feed listen failed, watchers poll", error=str(exc))
                if self._conn is not None:
                    self._conn.terminate()  # a half-set-up connection is not kept open
                self._conn = None
                await asyncio.sleep(RETRY_SECONDS)

    async def close(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()
        self._conn = None
