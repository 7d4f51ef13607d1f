"""Durable JetStream pull consumers with an inbox: every effect happens once.

For each message the handler runs in a transaction that also inserts
(consumer, event_id) into the inbox; a redelivered event finds its row and changes
nothing. A handler that keeps failing is retried with growing delays (nak with delay)
and, after a bounded number of deliveries, stored in dead_letters and terminated.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg
import nats
from google.protobuf.message import DecodeError, Message
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import Counter, Histogram

from common.v1 import event_pb2
from services.common import db, messaging
from services.common.logging import get_logger

log = get_logger(__name__)

CONSUMED = Counter("events_consumed_total", "Events handled, by outcome.", ("consumer", "outcome"))
# How far behind its events a consumer runs (the producers' and this host's clocks agree
# through NTP): what a patient waits between a change and its message, in production.
AGE = Histogram("events_handled_age_seconds", "From an event's occur_time to the commit of its handling.",
                ("consumer",), buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0))

Handler = Callable[[asyncpg.Connection, event_pb2.EventEnvelope, Message], Awaitable[None]]


class PermanentError(Exception):
    """The event can never be handled; retrying is pointless."""


class _DatabaseUnavailable(Exception):
    """The event is fine, the database is not: stop fetching until it is back."""


@dataclass
class Subscription:
    """What one durable consumer listens to and how it handles each event type."""
    durable: str
    stream: str
    filter_subjects: list[str]
    handlers: dict[str, tuple[type[Message], Handler]] = field(default_factory=dict)
    # The events of one fetch in one transaction (one commit, and the inbox rows with them),
    # for handlers that only write to the database and are quick; when any of them fails,
    # the fetch is handled again one event at a time, so only that event is retried.
    shared_transaction: bool = False

    def on(self, message_type: type[Message], handler: Handler) -> "Subscription":
        self.handlers[message_type.DESCRIPTOR.full_name] = (message_type, handler)
        return self


class EventConsumer:
    def __init__(self, broker: messaging.Broker, pool: asyncpg.Pool, subscription: Subscription, *,
                 max_deliver: int = 5, ack_wait: float = 30.0, batch: int = 50,
                 fetch_timeout: float = 1.0, retry_base_delay: float = 0.5) -> None:
        self._broker = broker
        self._pool = pool
        self.sub = subscription
        self._max_deliver = max_deliver
        self._ack_wait = ack_wait
        self._batch = batch
        self._fetch_timeout = fetch_timeout
        self._retry_base = retry_base_delay
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.processed = 0

    def _config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.sub.durable, deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT, ack_wait=self._ack_wait,
            # The server's own bound is a backstop for a process that dies on a message
            # before it can record it; ours (lower) dead-letters it properly.
            max_deliver=self._max_deliver + 2, max_ack_pending=1000,
            filter_subjects=self.sub.filter_subjects)

    async def _bind(self):
        # The producer may not have started yet; the stream is declared the same by all.
        owner = {name: service for service, name in messaging.STREAMS.items()}.get(self.sub.stream)
        if owner:
            await self._broker.ensure_stream(owner, self._broker.stream_replicas)
        await self._broker.js.add_consumer(self.sub.stream, self._config())
        return await self._broker.js.pull_subscribe_bind(self.sub.durable, stream=self.sub.stream)

    def start(self) -> asyncio.Task:
        self._task = asyncio.create_task(self._run(), name=f"consumer-{self.sub.durable}")
        return self._task

    async def stop(self, timeout: float | None = None) -> None:
        """Finish the message in hand, hand the rest of its fetch back, stop fetching; past
        `timeout`, cancel the message in hand too (its transaction rolls back, unacked: it
        comes back after ack_wait)."""
        self._stopping.set()
        if self._task is None:
            return
        await asyncio.wait({self._task}, timeout=timeout)
        if not self._task.done():
            log.warning("consumer stop timed out, message in hand abandoned", consumer=self.sub.durable)
            self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        self._psub = None
        try:
            await self._loop()
        finally:
            if self._psub is not None:
                try:
                    await self._psub.unsubscribe()
                except Exception:  # noqa: BLE001 - connection may be gone
                    pass

    async def _loop(self) -> None:
        psub = None
        generation = -1
        failures = 0
        while not self._stopping.is_set():
            try:
                if psub is None or generation != self._broker.generation:
                    if psub is not None:
                        try:
                            await psub.unsubscribe()
                        except Exception:  # noqa: BLE001 - the old one may already be gone
                            pass
                    generation = self._broker.generation
                    psub = self._psub = await self._bind()
                try:
                    msgs = await psub.fetch(self._batch, timeout=self._fetch_timeout)
                except nats.errors.TimeoutError:
                    continue
                failures = 0
                if (self.sub.shared_transaction and len(msgs) > 1 and not self._stopping.is_set()
                        and await self._handle_together(msgs)):
                    continue
                for i, msg in enumerate(msgs):
                    if self._stopping.is_set():
                        # Shutting down: a fetch can hold minutes of work (a solve per event);
                        # what is not started goes back now, for another replica to take at
                        # once rather than after ack_wait.
                        await self._hand_back(msgs[i:], 0)
                        break
                    try:
                        await self._handle(msg)
                    except _DatabaseUnavailable:
                        # The rest of the batch would fail the same way; hand it back now
                        # rather than after ack_wait, then fetch nothing (every fetch is a
                        # delivery, counted towards dead-lettering) until the database answers.
                        await self._hand_back(msgs[i + 1:], 1.0)
                        await self._wait_for_database()
                        break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - broker trouble: re-bind and go on
                failures += 1
                # Re-bind through the branch above, which unsubscribes the old subscription:
                # left subscribed, the broker's drain at shutdown would wait on it until its timeout.
                generation = -1
                log.warning("consumer loop error", consumer=self.sub.durable, error=repr(exc))
                await asyncio.sleep(min(5.0, 0.2 * failures))

    async def _handle_once(self, conn: asyncpg.Connection, msg, env: event_pb2.EventEnvelope) -> bool:
        """Record the event in the inbox and, the first time, apply it: in the caller's
        transaction. False when it was handled before."""
        fresh = await conn.fetchval(
            "INSERT INTO inbox (consumer, event_id, subject) VALUES ($1, $2, $3) "
            "ON CONFLICT DO NOTHING RETURNING true", self.sub.durable, env.event_id, msg.subject)
        if fresh:
            await self._apply(conn, env)
        return bool(fresh)

    async def _handle_all_once(self, conn: asyncpg.Connection, msgs: list,
                               envs: list[event_pb2.EventEnvelope]) -> list[bool]:
        """`_handle_once` for a whole fetch, with one inbox statement for all of it."""
        rows = await conn.fetch(
            "INSERT INTO inbox (consumer, event_id, subject) "
            "SELECT $1, e, s FROM unnest($2::uuid[], $3::text[]) AS t(e, s) "
            "ON CONFLICT DO NOTHING RETURNING event_id::text", self.sub.durable,
            [env.event_id for env in envs], [msg.subject for msg in msgs])
        # A fetch may hold one event twice (a redelivery beside its original): the first is fresh.
        unclaimed = {row[0] for row in rows}
        fresh = []
        for env in envs:
            key = str(uuid.UUID(env.event_id))
            new = key in unclaimed
            if new:
                unclaimed.discard(key)
                await self._apply(conn, env)
            fresh.append(new)
        return fresh

    async def _apply(self, conn: asyncpg.Connection, env: event_pb2.EventEnvelope) -> None:
        entry = self.sub.handlers.get(env.event_type)
        if entry is not None:
            message_type, handler = entry
            payload = message_type()
            if not env.payload.Unpack(payload):
                raise PermanentError(f"payload is not {env.event_type}")
            await handler(conn, env, payload)

    async def _handled(self, msg, env: event_pb2.EventEnvelope, fresh: bool) -> None:
        if fresh and env.HasField("occur_time"):
            age = time.time() - env.occur_time.ToNanoseconds() / 1e9
            AGE.labels(self.sub.durable).observe(max(0.0, age))
        await msg.ack()
        self.processed += 1
        CONSUMED.labels(self.sub.durable, "handled" if fresh else "duplicate").inc()

    async def _handle_together(self, msgs: list) -> bool:
        """All of a fetch in one transaction; False (nothing written) when one of them fails
        or cannot be decoded, for `_handle` to take them one at a time."""
        try:
            envs = [event_pb2.EventEnvelope.FromString(msg.data) for msg in msgs]
            if not all(env.event_id for env in envs):
                return False
            async with self._pool.acquire() as conn, conn.transaction():
                fresh = await self._handle_all_once(conn, msgs, envs)
        except Exception:  # noqa: BLE001 - which event failed, and how, is for `_handle` to find
            return False
        for msg, env, new in zip(msgs, envs, fresh):
            try:
                await self._handled(msg, env, new)
            except Exception as exc:  # noqa: BLE001 - unacked, it comes back and the inbox drops it
                log.warning("ack failed", consumer=self.sub.durable, error=repr(exc))
        return True

    async def _handle(self, msg) -> None:
        deliveries = msg.metadata.num_delivered if msg.metadata else 1
        try:
            env = event_pb2.EventEnvelope.FromString(msg.data)
            if not env.event_id:
                raise PermanentError("envelope without event id")
        except (DecodeError, PermanentError) as exc:
            await self._dead_letter(msg, None, deliveries, f"undecodable: {exc}")
            return
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                fresh = await self._handle_once(conn, msg, env)
            await self._handled(msg, env, fresh)
        except PermanentError as exc:
            await self._dead_letter(msg, env.event_id, deliveries, str(exc))
        except Exception as exc:  # noqa: BLE001 - decide between waiting, retry and dead letter
            if isinstance(exc, db.UNAVAILABLE_ERRORS) and not await self._database_answers():
                # Never dead-letter an event because the database was down while it was tried.
                log.warning("database unavailable, event will be redelivered", consumer=self.sub.durable,
                            event_id=env.event_id, deliveries=deliveries, error=repr(exc))
                CONSUMED.labels(self.sub.durable, "retried").inc()
                await self._nak(msg, 1.0)
                raise _DatabaseUnavailable from exc
            if deliveries >= self._max_deliver:
                await self._dead_letter(msg, env.event_id, deliveries, repr(exc))
                return
            delay = self._retry_base * 2 ** (deliveries - 1)
            log.warning("event handler failed, will retry", consumer=self.sub.durable,
                        event_id=env.event_id, deliveries=deliveries, delay=delay, error=repr(exc))
            CONSUMED.labels(self.sub.durable, "retried").inc()
            await msg.nak(delay=delay)

    async def _hand_back(self, msgs: list, delay: float) -> None:
        for msg in msgs:
            await self._nak(msg, delay)

    async def _nak(self, msg, delay: float) -> None:
        try:
            await msg.nak(delay=delay)
        except Exception as exc:  # noqa: BLE001 - unacked, it comes back after ack_wait anyway
            log.warning("nak failed", consumer=self.sub.durable, error=repr(exc))

    async def _database_answers(self) -> bool:
        return await db.answers(self._pool, timeout=5)

    async def _wait_for_database(self) -> None:
        failures = 0
        while not self._stopping.is_set() and not await self._database_answers():
            failures += 1
            await asyncio.sleep(min(2.0, 0.1 * 2 ** failures))

    async def _dead_letter(self, msg, event_id: str | None, deliveries: int, error: str) -> None:
        log.error("event dead-lettered", consumer=self.sub.durable, event_id=event_id,
                  deliveries=deliveries, error=error)
        try:
            await self._pool.execute(
                "INSERT INTO dead_letters (consumer, subject, event_id, deliveries, error, payload) "
                "VALUES ($1, $2, $3, $4, $5, $6)", self.sub.durable, msg.subject, event_id, deliveries,
                error[:2000], msg.data)
        except Exception as exc:  # noqa: BLE001 - cannot record it: let it be redelivered
            log.warning("dead letter not recorded", error=repr(exc))
            await msg.nak(delay=5)
            return
        CONSUMED.labels(self.sub.durable, "dead_lettered").inc()
        await msg.term()


def inbox_retention(outbox_retention: timedelta) -> timedelta:
    """How long an inbox row must stay for its event never to be applied twice. An event
    can come again for as long as its stream keeps it (a consumer reset or created anew
    replays the stream), and an outbox replay re-publishes a sent event for as long as the
    outbox keeps it, into a stream that keeps the copy its full age again. A day more for
    the clocks and the gap between publishing and handling."""
    return messaging.STREAM_MAX_AGE + outbox_retention + timedelta(days=1)


async def purge_inbox(pool: asyncpg.Pool, retention: timedelta, batch: int = 5000) -> int:
    """Delete the inbox rows older than `retention`, a batch per transaction (the first
    purge after an upgrade may find a year of rows); returns how many."""
    total = 0
    while True:
        deleted = await pool.execute(
            "DELETE FROM inbox WHERE ctid = ANY(ARRAY("
            "SELECT ctid FROM inbox WHERE processed_at < now() - $1::interval LIMIT $2))", retention, batch)
        count = int(deleted.split()[-1])
        total += count
        if count < batch:
            return total
