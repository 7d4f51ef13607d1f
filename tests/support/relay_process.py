"""Runs an outbox relay that dies by SIGKILL right after the Nth publish is acknowledged.

That is the worst moment for an outbox: the broker has the event, the database does not
know it. Usage: python -m tests.support.relay_process <dsn> <nats_url> <schema> <kill_after>
(kill_after 0 = never; the process then exits when the outbox is empty).
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys

from services.common import db, messaging
from services.common.outbox import OutboxRelay


class _KillingJetStream:
    def __init__(self, js, kill_after: int, counted_prefix: str = "") -> None:
        self._js = js
        self._left = kill_after
        # Only publishes on subjects with this prefix count (e.g. a test's referral events,
        # not the membership events its own set-up causes).
        self._counted = counted_prefix

    async def publish(self, subject, *args, **kwargs):
        ack = await self._js.publish(subject, *args, **kwargs)
        if subject.startswith(self._counted):
            self._acknowledged()
        return ack

    async def publish_async(self, subject, *args, **kwargs):
        future = await self._js.publish_async(subject, *args, **kwargs)
        if subject.startswith(self._counted):
            future.add_done_callback(lambda f: f.cancelled() or f.exception() or self._acknowledged())
        return future

    def _acknowledged(self) -> None:
        self._left -= 1
        if self._left == 0:
            os.kill(os.getpid(), signal.SIGKILL)


async def main(dsn: str, nats_url: str, schema: str, kill_after: int) -> None:
    pool = await db.create_pool(dsn, schema, min_size=1, max_size=2)
    broker = await messaging.Broker.connect(nats_url, name="relay-under-test")
    if kill_after:
        broker.js = _KillingJetStream(broker.js, kill_after)  # type: ignore[assignment]
    relay = OutboxRelay(pool, broker, schema, dsn=dsn, batch_size=7)
    while await relay.relay_once():
        pass
    await broker.close()
    await pool.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
