"""An event reaches its consumer exactly once in effect, though the relay is SIGKILLed
between publish and mark-sent, again and again."""
import asyncio
import uuid

from common.v1 import types_pb2
from services.common import messaging
from services.common.consumer import EventConsumer, Subscription

from .conftest import TEST_STREAM, recording
from .test_outbox_inbox import _count, _write_events


async def _run_relay(stack, schema, kill_after: int) -> int:
    proc = stack.spawn("tests.support.relay_process", "relay-crash", stack.database_url,
                       stack.nats_url, schema, str(kill_after))
    return await asyncio.to_thread(proc.wait, 60)


async def test_relay_killed_between_publish_and_mark_sent(stack, pool, broker, schema):
    hospital = f"H{uuid.uuid4().hex[:6]}"
    await pool.execute("CREATE TABLE effects (event_id uuid PRIMARY KEY, n int NOT NULL DEFAULT 1)")

    async def effect(conn, env, payload):
        # Upsert counting: a second application would show as n = 2, not as an error.
        await conn.execute("INSERT INTO effects (event_id) VALUES ($1) "
                           "ON CONFLICT (event_id) DO UPDATE SET n = effects.n + 1", env.event_id)

    sub = Subscription(durable=f"k_{hospital}", stream=TEST_STREAM,
                       filter_subjects=[f"common.v1.Date.{hospital}"]).on(types_pb2.Date, effect)
    consumer = EventConsumer(broker, pool, sub, fetch_timeout=0.3)
    consumer.start()
    ids = await _write_events(pool, hospital, 40)

    kills = 0
    for kill_after in (3, 5, 2, 6, 4):
        code = await _run_relay(stack, schema, kill_after)
        assert code == -9, f"relay was expected to die by SIGKILL, exit {code}"
        kills += 1
    assert await _run_relay(stack, schema, 0) == 0

    deadline = asyncio.get_running_loop().time() + 20
    while asyncio.get_running_loop().time() < deadline and await _count(pool, "SELECT count(*) FROM effects") < 40:
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # room for any late duplicate to show up
    rows = await pool.fetch("SELECT event_id, n FROM effects")
    missing = set(ids) - {str(r["event_id"]) for r in rows}
    duplicated = [r for r in rows if r["n"] != 1]
    unsent = await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
    print(f"relay SIGKILLs between publish and mark-sent = {kills}, "
          f"missing downstream = {len(missing)}, duplicated effects = {len(duplicated)}, unsent = {unsent}")
    assert not missing and not duplicated and unsent == 0
    await consumer.stop()


async def test_replay_beyond_dedupe_window_is_absorbed_by_inbox(stack, pool, broker, schema):
    """Publishing the same event id again under a new Nats-Msg-Id (as a replay after the
    broker's duplicate window would) changes nothing downstream."""
    hospital = f"H{uuid.uuid4().hex[:6]}"
    sub, applied = recording("r", hospital)
    consumer = EventConsumer(broker, pool, sub, fetch_timeout=0.3)
    consumer.start()
    event = types_pb2.Date(year=2026, month=1, day=2)
    env = messaging.envelope(event, aggregate_id="a", hospital_id=hospital)
    subject = messaging.subject_for(event, hospital)
    for attempt in range(3):
        await broker.js.publish(subject, env.SerializeToString(), headers={"Nats-Msg-Id": f"{env.event_id}-{attempt}"})
    deadline = asyncio.get_running_loop().time() + 10
    while asyncio.get_running_loop().time() < deadline and consumer.processed < 3:
        await asyncio.sleep(0.1)
    assert consumer.processed == 3  # all three deliveries were seen ...
    assert applied == [env.event_id]  # ... and applied once
    await consumer.stop()
