"""The outbox relay and the inbox consumer against real PostgreSQL and NATS."""
import asyncio
import uuid
from datetime import timedelta

from common.v1 import types_pb2
from services.common import outbox
from services.common.consumer import EventConsumer, PermanentError, Subscription, inbox_retention, purge_inbox
from services.common.outbox import OutboxRelay
from tests.support.metrics import metric

from .conftest import TEST_STREAM, recording


async def _write_events(pool, hospital: str, n: int) -> list[str]:
    ids = []
    async with pool.acquire() as conn, conn.transaction():
        for i in range(n):
            env = await outbox.add(conn, types_pb2.Date(year=2026, month=11, day=i + 1),
                                   aggregate_id=f"agg-{i}", hospital_id=hospital)
            ids.append(env.event_id)
    return ids


async def _wait_for(predicate, timeout=15.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.1)
    return False


async def test_add_outside_transaction_is_refused(pool):
    async with pool.acquire() as conn:
        try:
            await outbox.add(conn, types_pb2.Date(year=2026), aggregate_id="x", hospital_id="H1")
        except RuntimeError:
            return
    raise AssertionError("outbox.add accepted a write outside a transaction")


async def test_relay_publishes_and_consumer_applies_once(stack, pool, broker, schema):
    hospital = f"H{uuid.uuid4().hex[:6]}"
    seen: list[str] = []

    async def effect(conn, env, payload):
        await conn.execute("CREATE TABLE IF NOT EXISTS effects (event_id uuid PRIMARY KEY, day int)")
        await conn.execute("INSERT INTO effects VALUES ($1, $2)", env.event_id, payload.day)
        seen.append(env.event_id)

    sub = Subscription(durable=f"c_{hospital}", stream=TEST_STREAM,
                       filter_subjects=[f"common.v1.Date.{hospital}"]).on(types_pb2.Date, effect)
    consumer = EventConsumer(broker, pool, sub, fetch_timeout=0.5)
    relay = OutboxRelay(pool, broker, schema, dsn=stack.database_url, poll_seconds=0.2)
    consumer.start()
    relay.start()
    ids = await _write_events(pool, hospital, 20)
    assert await _wait_for(lambda: _eq(pool, "SELECT count(*) FROM effects", 20))
    unsent = await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
    assert unsent == 0
    # Re-publishing every event (as a relay would after losing its marks) changes nothing.
    await pool.execute("UPDATE outbox SET sent_at = NULL")
    relay.wake()
    assert await _wait_for(lambda: _eq(pool, "SELECT count(*) FROM outbox WHERE sent_at IS NULL", 0))
    await asyncio.sleep(1.0)
    assert await pool.fetchval("SELECT count(*) FROM effects") == 20
    assert sorted(seen) == sorted(ids)
    assert _ages(sub.durable) == 20  # how late each was handled, observed once per event
    await relay.stop()
    await consumer.stop()


def _ages(consumer: str) -> float:
    return metric("events_handled_age_seconds_count", consumer=consumer)


async def _count(pool, sql):
    try:
        return await pool.fetchval(sql)
    except Exception:  # noqa: BLE001 - the table may not exist yet
        return 0


async def _eq(pool, sql, expected):
    return await _count(pool, sql) == expected


async def test_poison_message_is_dead_lettered_after_bounded_deliveries(stack, pool, broker, schema):
    hospital = f"H{uuid.uuid4().hex[:6]}"
    attempts = 0

    async def always_fails(conn, env, payload):
        nonlocal attempts
        attempts += 1
        raise RuntimeError("downstream refused")

    sub = Subscription(durable=f"p_{hospital}", stream=TEST_STREAM,
                       filter_subjects=[f"common.v1.Date.{hospital}"]).on(types_pb2.Date, always_fails)
    consumer = EventConsumer(broker, pool, sub, max_deliver=3, fetch_timeout=0.3, retry_base_delay=0.1)
    relay = OutboxRelay(pool, broker, schema, dsn=stack.database_url, poll_seconds=0.2)
    consumer.start()
    relay.start()
    await _write_events(pool, hospital, 1)
    assert await _wait_for(lambda: _eq(pool, "SELECT count(*) FROM dead_letters", 1), 20)
    row = await pool.fetchrow("SELECT deliveries, error FROM dead_letters")
    assert row["deliveries"] == 3 and "downstream refused" in row["error"]
    assert attempts == 3
    # The failed effect left no inbox row: the transaction rolled back each time.
    assert await pool.fetchval("SELECT count(*) FROM inbox") == 0
    await relay.stop()
    await consumer.stop()


async def test_permanent_error_is_dead_lettered_at_once(stack, pool, broker, schema):
    hospital = f"H{uuid.uuid4().hex[:6]}"

    async def rejects(conn, env, payload):
        raise PermanentError("not for us")

    sub = Subscription(durable=f"q_{hospital}", stream=TEST_STREAM,
                       filter_subjects=[f"common.v1.Date.{hospital}"]).on(types_pb2.Date, rejects)
    consumer = EventConsumer(broker, pool, sub, fetch_timeout=0.3)
    relay = OutboxRelay(pool, broker, schema, dsn=stack.database_url, poll_seconds=0.2)
    consumer.start()
    relay.start()
    await _write_events(pool, hospital, 1)
    assert await _wait_for(lambda: _eq(pool, "SELECT count(*) FROM dead_letters WHERE deliveries = 1", 1))
    await relay.stop()
    await consumer.stop()


async def test_purge_keeps_rows_within_retention(stack, pool, broker, schema):
    hospital = f"H{uuid.uuid4().hex[:6]}"
    await _write_events(pool, hospital, 3)
    relay = OutboxRelay(pool, broker, schema, dsn=stack.database_url)
    assert await relay.relay_once() == 3
    assert await relay.purge() == 0  # sent just now: kept for replay
    await pool.execute("UPDATE outbox SET sent_at = now() - interval '30 days'")
    assert await relay.purge() == 3


async def _published(pool) -> bool:
    return await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0


async def test_shared_transaction_applies_a_fetch_together_and_isolates_a_poison_event(stack, pool, broker,
                                                                                        schema):
    hospital = f"H{uuid.uuid4().hex[:6]}"
    attempts: dict[int, int] = {}

    async def effect(conn, env, payload):
        attempts[payload.day] = attempts.get(payload.day, 0) + 1
        txid = await conn.fetchval("SELECT pg_current_xact_id()::text::bigint")
        if payload.day == 7:
            raise RuntimeError("this one never goes through")
        await conn.execute("CREATE TABLE IF NOT EXISTS shared_effects (event_id uuid PRIMARY KEY, txid bigint)")
        await conn.execute("INSERT INTO shared_effects VALUES ($1, $2)", env.event_id, txid)

    relay = OutboxRelay(pool, broker, schema, dsn=stack.database_url, poll_seconds=0.2)
    relay.start()
    await _write_events(pool, hospital, 20)
    assert await _wait_for(lambda: _published(pool))
    # Everything is in the stream before the consumer starts, so its first fetch holds all 20.
    sub = Subscription(durable=f"s_{hospital}", stream=TEST_STREAM, filter_subjects=[f"common.v1.Date.{hospital}"],
                       shared_transaction=True).on(types_pb2.Date, effect)
    consumer = EventConsumer(broker, pool, sub, max_deliver=3, fetch_timeout=0.3, retry_base_delay=0.1)
    consumer.start()
    assert await _wait_for(lambda: _eq(pool, "SELECT count(*) FROM dead_letters WHERE error LIKE "
                                             "'%never goes through%'", 1), 20)
    rows = await pool.fetch("SELECT event_id, txid FROM shared_effects")
    applied = [(str(r["event_id"]), r["txid"]) for r in rows]
    # The 19 good events committed once each; the poison one wrote nothing and was dead-lettered.
    assert len(applied) == 19 and len({e for e, _ in applied}) == 19
    assert await pool.fetchval("SELECT count(*) FROM inbox WHERE consumer = $1", sub.durable) == 19
    assert attempts[7] >= 3 and all(n <= 2 for day, n in attempts.items() if day != 7)
    await consumer.stop()

    # A fetch without a failing event commits as one transaction.
    hospital2 = f"H{uuid.uuid4().hex[:6]}"
    txids: list[int] = []

    async def quiet(conn, env, payload):
        txids.append(await conn.fetchval("SELECT pg_current_xact_id()::text::bigint"))

    await _write_events(pool, hospital2, 10)
    assert await _wait_for(lambda: _published(pool))
    sub2 = Subscription(durable=f"s_{hospital2}", stream=TEST_STREAM, filter_subjects=[f"common.v1.Date.{hospital2}"],
                        shared_transaction=True).on(types_pb2.Date, quiet)
    consumer2 = EventConsumer(broker, pool, sub2, fetch_timeout=0.3)
    consumer2.start()
    assert await _wait_for(lambda: _eq(pool, f"SELECT count(*) FROM inbox WHERE consumer = '{sub2.durable}'", 10))
    assert len(txids) == 10 and len(set(txids)) < 10
    await consumer2.stop()
    await relay.stop()


async def test_shared_transaction_applies_a_repeated_or_handled_event_once(stack, pool, broker, schema):
    """A fetch may carry an event twice (a re-publish beside the original) and one the inbox
    already holds: each is applied at most once, and the fetch still commits as one."""
    hospital = f"H{uuid.uuid4().hex[:6]}"
    ids = await _write_events(pool, hospital, 4)
    rows = await pool.fetch("SELECT event_id, subject, payload FROM outbox WHERE event_id = ANY($1::uuid[]) "
                            "ORDER BY seq", ids)
    sub = Subscription(durable=f"r_{hospital}", stream=TEST_STREAM, filter_subjects=[f"common.v1.Date.{hospital}"],
                       shared_transaction=True)
    # The last event was handled before this fetch.
    await pool.execute("INSERT INTO inbox (consumer, event_id, subject) VALUES ($1, $2, $3)",
                       sub.durable, rows[3]["event_id"], rows[3]["subject"])
    # Published without a message id, so JetStream keeps the second copy of the first event.
    for row in (rows[0], rows[1], rows[0], rows[2], rows[3]):
        await broker.js.publish(row["subject"], row["payload"])
    applied: list[tuple[str, int]] = []

    async def effect(conn, env, payload):
        applied.append((env.event_id, await conn.fetchval("SELECT pg_current_xact_id()::text::bigint")))

    sub.on(types_pb2.Date, effect)
    consumer = EventConsumer(broker, pool, sub, fetch_timeout=0.3)
    consumer.start()
    assert await _wait_for(lambda: _eq(pool, f"SELECT count(*) FROM inbox WHERE consumer = '{sub.durable}'", 4))
    await asyncio.sleep(0.5)
    await consumer.stop()
    assert [e for e, _ in applied] == ids[:3]
    assert len({tx for _, tx in applied}) == 1
    assert consumer.processed == 5
    assert _ages(sub.durable) == 3  # neither the copy nor the event handled before


async def test_inbox_purge_keeps_what_a_replay_could_still_bring_back(stack, pool, broker, schema):
    hospital = f"H{uuid.uuid4().hex[:6]}"
    ids = await _write_events(pool, hospital, 3)
    rows = await pool.fetch("SELECT subject, payload FROM outbox WHERE event_id = ANY($1::uuid[]) ORDER BY seq", ids)
    sub, applied = recording("i", hospital)
    consumer = EventConsumer(broker, pool, sub, fetch_timeout=0.3)
    consumer.start()
    # Published without a message id: each copy reaches the consumer, as one a replay
    # re-publishes after JetStream's duplicate window would.
    for row in rows:
        await broker.js.publish(row["subject"], row["payload"])
    assert await _wait_for(lambda: _eq(pool, f"SELECT count(*) FROM inbox WHERE consumer = '{sub.durable}'", 3))
    retention = inbox_retention(timedelta(hours=168))
    await pool.execute("UPDATE inbox SET processed_at = now() - $1::interval + interval '1 hour' "
                       "WHERE consumer = $2", retention, sub.durable)
    assert await purge_inbox(pool, retention) == 0
    for row in rows:
        await broker.js.publish(row["subject"], row["payload"])

    async def all_handled() -> bool:
        return consumer.processed == 6
    assert await _wait_for(all_handled)
    assert applied == ids  # the copies found their rows
    await consumer.stop()
    await pool.execute("UPDATE inbox SET processed_at = now() - $1::interval - interval '1 hour' "
                       "WHERE consumer = $2", retention, sub.durable)
    assert await purge_inbox(pool, retention, batch=2) == 3
    assert await pool.fetchval("SELECT count(*) FROM inbox WHERE consumer = $1", sub.durable) == 0


async def test_inbox_outlives_what_the_stream_and_the_outbox_keep(broker):
    """The inbox's retention is derived from the stream's age: read back from JetStream."""
    await broker.ensure_stream("referral")
    kept = timedelta(seconds=(await broker.js.stream_info("REFERRAL")).config.max_age)
    outbox_retention = timedelta(hours=168)
    assert kept == timedelta(days=30)
    assert inbox_retention(outbox_retention) > kept + outbox_retention


async def test_one_relay_at_a_time_keeps_an_aggregates_order_across_replicas(stack, pool, broker, schema):
    """Replica A holds the aggregate's first event (its broker link is slow); replica B must
    not publish the second one meanwhile: B stands by, and A then sends both in order."""
    hospital = f"H{uuid.uuid4().hex[:6]}"
    async with pool.acquire() as conn, conn.transaction():
        first = await outbox.add(conn, types_pb2.Date(year=2026, month=11, day=1), aggregate_id="R1",
                                 hospital_id=hospital)
        second = await outbox.add(conn, types_pb2.Date(year=2026, month=11, day=2), aggregate_id="R1",
                                  hospital_id=hospital)
    slow = OutboxRelay(pool, broker, schema, dsn=stack.database_url, batch_size=1)
    other = OutboxRelay(pool, broker, schema, dsn=stack.database_url)
    holding, release = asyncio.Event(), asyncio.Event()
    publish = slow._publish

    async def slow_publish(rows):
        holding.set()
        await release.wait()
        return await publish(rows)
    slow._publish = slow_publish
    a = asyncio.create_task(slow.relay_once())
    await asyncio.wait_for(holding.wait(), 10)
    assert await other.relay_once() == 0
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL") == 0
    release.set()
    assert await a == 1
    assert await other.relay_once() == 1
    order = await pool.fetch("SELECT event_id FROM outbox ORDER BY sent_at, seq")
    assert [str(r["event_id"]) for r in order] == [first.event_id, second.event_id]
