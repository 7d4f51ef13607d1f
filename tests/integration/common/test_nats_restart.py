"""A pull consumer keeps receiving after nats-server restarts (nats.py #504)."""
import asyncio
import time
import uuid

from services.common.consumer import EventConsumer
from services.common.outbox import OutboxRelay

from .conftest import recording
from .test_outbox_inbox import _write_events


async def test_consumer_resumes_after_nats_restart(stack, pool, broker, schema):
    hospital = f"H{uuid.uuid4().hex[:6]}"
    sub, got = recording("n", hospital)
    consumer = EventConsumer(broker, pool, sub, fetch_timeout=0.5)
    relay = OutboxRelay(pool, broker, schema, dsn=stack.database_url, poll_seconds=0.2)
    consumer.start()
    relay.start()
    await _write_events(pool, hospital, 5)
    await _until(lambda: len(got) == 5)

    await asyncio.to_thread(stack.stack.nats.restart)
    restarted = time.monotonic()
    ids = await _write_events(pool, hospital, 5)
    resumed = await _until(lambda: len(got) >= 6, timeout=30)
    assert resumed, "consumer did not resume after the restart"
    seconds = time.monotonic() - restarted
    # A message whose ack was lost in the restart comes back after the consumer's ack_wait
    # (30 s); the inbox then absorbs it. Wait past that before calling anything stranded.
    await _until(lambda: len(got) == 10, timeout=45)
    stranded = len(set(ids) - set(got))
    print(f"nats restart: consumption resumed after {seconds:.2f}s, stranded = {stranded}")
    assert stranded == 0 and len(got) == 10
    await relay.stop()
    await consumer.stop()


async def _until(predicate, timeout=15.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return False
