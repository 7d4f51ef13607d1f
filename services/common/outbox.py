"""Transactional outbox: events are rows written with the change, relayed to JetStream.

`add()` runs inside the caller's transaction, so an event exists if and only if the
change committed. One relay at a time per outbox claims a batch of the oldest unsent rows
(a transaction-scoped advisory lock: the other replicas' relays stand by), publishes each
with Nats-Msg-Id = event id, and marks it sent only on PubAck. Sharing the rows between
replicas would let a later event of an aggregate overtake an earlier one that another
replica holds (a cancellation published before the acceptance it cancels). A crash
between publish and mark-sent re-publishes the same id: JetStream's duplicate window and
the consumers' inbox absorb it; the crashed relay's lock goes with its connection.

A claimed batch is published pipelined (every message written, then the acknowledgements
awaited together: one round trip for the batch, not one per event), in waves so that an
aggregate's events still go out each after the previous one's PubAck: a failed publish
holds back the later events of its aggregate, never another aggregate's.
"""
from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta

import asyncpg
from google.protobuf.message import Message
from prometheus_client import Counter, Gauge

from common.v1 import event_pb2
from services.common import messaging
from services.common.logging import get_logger

log = get_logger(__name__)

PUBLISHED = Counter("outbox_published_total", "Outbox events published and acknowledged.", ("schema",))
PUBLISH_ERRORS = Counter("outbox_publish_errors_total", "Outbox publish attempts that failed.", ("schema",))
PENDING = Gauge("outbox_pending", "Unsent outbox rows seen at the last claim.", ("schema",))
PUBLISH_TIMEOUT_SECONDS = 5.0  # for a PubAck, as for a JetStream request
_RELAY_LOCK = 0x4F75_7442  # the advisory lock's first key, "OutB"; the second is the schema's hash


async def add(conn: asyncpg.Connection, event: Message, *, aggregate_id: str, hospital_id: str,
              request_id: str = "", event_id: str | None = None) -> event_pb2.EventEnvelope:
    """Write an event in the current transaction (the caller must hold one)."""
    if not conn.is_in_transaction():
        raise RuntimeError("outbox.add must run inside the transaction of the change")
    env, values = row(event, aggregate_id=aggregate_id, hospital_id=hospital_id, request_id=request_id,
                      event_id=event_id)
    await conn.execute(INSERT_SQL, *values)
    return env


INSERT_SQL = "INSERT INTO outbox (event_id, subject, event_type, aggregate_id, payload) VALUES ($1,$2,$3,$4,$5)"


def row(event: Message, *, aggregate_id: str, hospital_id: str, request_id: str = "",
        event_id: str | None = None) -> tuple[event_pb2.EventEnvelope, tuple]:
    """The envelope and the outbox row values (event_id, subject, event_type, aggregate_id,
    payload), for a caller that writes the row itself in a combined statement of its
    transaction (the same rule as `add`: the row must commit with the change)."""
    env = messaging.envelope(event, aggregate_id=aggregate_id, hospital_id=hospital_id,
                             request_id=request_id, event_id=event_id)
    return env, (env.event_id, messaging.subject_for(event, hospital_id), env.event_type, aggregate_id,
                 env.SerializeToString())


async def rewrite_unsent(conn: asyncpg.Connection, event_id: str, event: Message, *, aggregate_id: str,
                         hospital_id: str) -> bool:
    """Replace an event not yet published by a newer version under the same id (what the
    consumers have not seen cannot be stale for them). False once it is published or being
    published: the caller then announces the change with an event of its own."""
    old = await conn.fetchval("SELECT payload FROM outbox WHERE event_id = $1 AND sent_at IS NULL FOR UPDATE",
                              event_id)
    if old is None:
        return False
    previous = event_pb2.EventEnvelope.FromString(old)
    env = messaging.envelope(event, aggregate_id=aggregate_id, hospital_id=hospital_id, event_id=event_id,
                             request_id=previous.request_id, traceparent=previous.traceparent)
    await conn.execute("UPDATE outbox SET payload = $2 WHERE event_id = $1", event_id, env.SerializeToString())
    return True


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, broker: messaging.Broker, schema: str, *,
                 dsn: str, poll_seconds: float = 1.0, batch_size: int = 200,
                 retention: timedelta = timedelta(days=7), gather_seconds: float = 0.01) -> None:
        self._pool = pool
        self._broker = broker
        self._schema = schema
        self._dsn = dsn
        self._poll = poll_seconds
        self._batch = batch_size
        self._retention = retention
        # After a wake-up, wait this long so that a burst of commits goes out as one batch
        # (one claim, one mark-sent) rather than one relay round per commit.
        self._gather = gather_seconds
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._listener: asyncpg.Connection | None = None
        self.last_batch_failed = False

    def start(self) -> asyncio.Task:
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self._schema}")
        return self._task

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task:
            await asyncio.gather(self._task, return_exceptions=True)
        await self._close_listener()

    def wake(self) -> None:
        self._wake.set()

    async def _listen(self) -> None:
        """LISTEN is a latency optimisation only; the poll still finds everything."""
        if self._listener is not None and not self._listener.is_closed():
            return
        try:
            self._listener = await asyncpg.connect(self._dsn, timeout=5)
            await self._listener.add_listener(f"{self._schema}_outbox", lambda *_: self._wake.set())
        except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
            log.warning("outbox listen failed, polling only", error=str(exc))
            self._listener = None

    async def _close_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()
        self._listener = None

    async def _run(self) -> None:
        last_purge = 0.0
        failures = 0
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            # Cleared before the round, not after: a commit's wake-up that arrives while a
            # batch is in flight starts the next round at once instead of after a poll.
            self._wake.clear()
            try:
                await self._listen()
                sent = await self.relay_once()
                if self.last_batch_failed:
                    raise ConnectionError("broker refused a publish")
                failures = 0
                if loop.time() - last_purge > 300:
                    await self.purge()
                    last_purge = loop.time()
                if sent >= self._batch:
                    continue  # more may be waiting
            except Exception as exc:  # noqa: BLE001 - the relay must outlive any failed round
                # Not only the expected errors: one unexpected exception here would end the
                # task silently and leave every later event unsent while the service looks healthy.
                failures += 1
                await self._close_listener()
                log.warning("outbox relay error", error=str(exc), failures=failures)
                await asyncio.sleep(min(5.0, 0.2 * 2 ** failures) * random.uniform(0.5, 1.0))
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll)
                if self._gather and not self._stopping.is_set():
                    await asyncio.sleep(self._gather)
            except asyncio.TimeoutError:
                pass

    async def relay_once(self) -> int:
        """Publish one batch; returns how many rows were marked sent."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
                                       _RELAY_LOCK, self._schema):
                return 0  # another replica's relay is publishing this outbox
            rows = await conn.fetch(
                "SELECT seq, event_id, subject, aggregate_id, payload FROM outbox WHERE sent_at IS NULL "
                "ORDER BY seq LIMIT $1 FOR UPDATE", self._batch)  # rewrite_unsent waits for the batch
            PENDING.labels(self._schema).set(len(rows))
            if not rows:
                return 0
            sent, failed = await self._publish(rows)
            if failed:
                PUBLISH_ERRORS.labels(self._schema).inc(len(failed))
                errors = [(str(exc) or repr(exc))[:500] for _, exc in failed]
                await conn.execute(
                    "UPDATE outbox o SET attempts = attempts + 1, last_error = f.error "
                    "FROM unnest($1::bigint[], $2::text[]) AS f(seq, error) WHERE o.seq = f.seq",
                    [row["seq"] for row, _ in failed], errors)
                log.warning("outbox publish failed", failed=len(failed), event_id=str(failed[0][0]["event_id"]),
                            error=errors[0])
            if sent:
                await conn.execute("UPDATE outbox SET sent_at = now(), attempts = attempts + 1 "
                                   "WHERE seq = ANY($1::bigint[])", sent)
                PUBLISHED.labels(self._schema).inc(len(sent))
            self.last_batch_failed = len(sent) < len(rows)
            return len(sent)

    async def _publish(self, rows: list) -> tuple[list[int], list[tuple[asyncpg.Record, BaseException]]]:
        """The rows' seqs acknowledged by JetStream, and the failures. Wave after wave, each
        holding at most one row per aggregate (its earliest unpublished one); an aggregate
        whose row failed sends nothing more this round."""
        sent: list[int] = []
        failed: list[tuple[asyncpg.Record, BaseException]] = []
        held: set[str] = set()
        pending = list(rows)
        while pending:
            wave, later, seen = [], [], set()
            for row in pending:
                if row["aggregate_id"] in held:
                    continue
                (later if row["aggregate_id"] in seen else wave).append(row)
                seen.add(row["aggregate_id"])
            acks = []
            for row in wave:
                try:
                    ack = await self._broker.js.publish_async(row["subject"], row["payload"],
                                                              headers={"Nats-Msg-Id": str(row["event_id"])})
                except Exception as exc:  # noqa: BLE001 - not even written: fail it like a refused one
                    ack = asyncio.get_running_loop().create_future()
                    ack.set_exception(exc)
                acks.append(asyncio.wait_for(ack, PUBLISH_TIMEOUT_SECONDS))
            for row, result in zip(wave, await asyncio.gather(*acks, return_exceptions=True)):
                if isinstance(result, BaseException):
                    failed.append((row, result))
                    held.add(row["aggregate_id"])
                else:
                    sent.append(row["seq"])
            pending = later
        return sent, failed

    async def purge(self) -> int:
        result = await self._pool.execute(
            "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < now() - $1::interval",
            self._retention)
        return int(result.split()[-1])

    async def replay(self, since: datetime) -> int:
        """Re-publish events sent since a moment, e.g. after the broker lost data."""
        result = await self._pool.execute(
            "UPDATE outbox SET sent_at = NULL WHERE sent_at IS NOT NULL AND created_at >= $1", since)
        self.wake()
        return int(result.split()[-1])
