"""An operator hands a dead-lettered event back once its cause is fixed: the consumer that
failed applies it, the others do nothing (their inbox has it)."""
import asyncio
import json
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest

from common.v1 import types_pb2
from services.common import dead_letters, db
from services.common.consumer import EventConsumer, PermanentError, Subscription, inbox_retention
from services.common.outbox import OutboxRelay

from .conftest import TEST_STREAM, recording
from .test_outbox_inbox import _eq, _wait_for, _write_events

RETENTION = inbox_retention(timedelta(hours=168))


async def test_a_redelivered_dead_letter_reaches_only_the_consumer_that_failed(stack, pool, broker, schema):
    hospital = f"H{uuid.uuid4().hex[:6]}"
    healthy, healthy_applied = recording("h", hospital)
    fixed = False
    applied: list[str] = []

    async def until_fixed(conn, env, payload):
        if not fixed:
            raise PermanentError("template missing")
        applied.append(env.event_id)

    failing = Subscription(durable=f"f_{hospital}", stream=TEST_STREAM,
                           filter_subjects=[f"common.v1.Date.{hospital}"]).on(types_pb2.Date, until_fixed)
    consumers = [EventConsumer(broker, pool, s, fetch_timeout=0.3) for s in (healthy, failing)]
    relay = OutboxRelay(pool, broker, schema, dsn=stack.database_url, poll_seconds=0.2)
    for c in consumers:
        c.start()
    relay.start()
    [event_id] = await _write_events(pool, hospital, 1)
    assert await _wait_for(lambda: _eq(pool, "SELECT count(*) FROM dead_letters", 1))
    assert await _wait_for(lambda: _eq(pool, "SELECT count(*) FROM inbox", 1))  # the healthy one's

    [letter] = await dead_letters.pending(pool)
    assert (letter.consumer, letter.event_id, letter.event_type, letter.aggregate_id) == (
        failing.durable, event_id, "common.v1.Date", "agg-0")
    assert "template missing" in letter.error and letter.redelivered_at is None

    fixed = True
    done = await dead_letters.redeliver(pool, broker, letter.id, inbox_retention=RETENTION)
    assert done.redelivered_at is not None
    assert await _wait_for(lambda: _eq(pool, "SELECT count(*) FROM inbox", 2))
    await asyncio.sleep(0.5)
    assert applied == [event_id] and healthy_applied == [event_id]
    assert await dead_letters.pending(pool) == []
    assert [d.id for d in await dead_letters.pending(pool, include_redelivered=True)] == [letter.id]
    with pytest.raises(dead_letters.RedeliveryRefused, match="was redelivered"):
        await dead_letters.redeliver(pool, broker, letter.id, inbox_retention=RETENTION)
    await relay.stop()
    for c in consumers:
        await c.stop()


async def test_a_dead_letter_older_than_the_inbox_retention_is_refused(pool, broker):
    """The other consumers' inbox may no longer hold it: they would apply it a second time."""
    letter_id = await pool.fetchval(
        "INSERT INTO dead_letters (consumer, subject, event_id, deliveries, error, payload, created_at) "
        "VALUES ('c', 'common.v1.Date.H1', $1, 5, 'x', '\\x'::bytea, now() - $2::interval) RETURNING id",
        str(uuid.uuid4()), RETENTION + timedelta(hours=1))
    with pytest.raises(dead_letters.RedeliveryRefused, match="older than the inbox retention"):
        await dead_letters.redeliver(pool, broker, letter_id, inbox_retention=RETENTION)
    assert await pool.fetchval("SELECT redelivered_at FROM dead_letters WHERE id = $1", letter_id) is None


async def test_the_service_command_lists_dead_letters_and_says_why_it_refuses(stack):
    await db.migrate(stack.database_url, "notify", "notify")
    consumer = f"cli-{uuid.uuid4().hex[:6]}"
    pool = await db.create_pool(stack.database_url, "notify", min_size=1, max_size=1)
    try:
        letter_id = await pool.fetchval(
            "INSERT INTO dead_letters (consumer, subject, event_id, deliveries, error, payload) "
            "VALUES ($1, 'referral.v1.ReferralAccepted.H1', $2, 5, '手机号13812345678无法送达', '\\x'::bytea) "
            "RETURNING id", consumer, str(uuid.uuid4()))

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "services.notify", *args], env=stack.env("notify"),
                                  capture_output=True, text=True, timeout=60)
        listed = await asyncio.to_thread(run, "dead-letters")
        assert listed.returncode == 0, listed.stderr
        [mine] = [r for r in map(json.loads, listed.stdout.splitlines()) if r["consumer"] == consumer]
        assert mine["id"] == letter_id and "13812345678" not in mine["error"]  # masked, as in a log line
        refused = await asyncio.to_thread(run, "redeliver", str(letter_id + 10_000))
        assert refused.returncode == 1 and f"no dead letter {letter_id + 10_000}" in refused.stderr
    finally:
        await pool.execute("DELETE FROM dead_letters WHERE consumer = $1", consumer)
        await pool.close()
