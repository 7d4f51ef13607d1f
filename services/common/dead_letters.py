"""What an operator does about a dead-lettered event.

A consumer that gives up on an event stores it in `dead_letters` and alerts
(`events_consumed_total{outcome="dead_lettered"}`); the effect it should have had (a
booking, a patient's message) has not happened. Once the cause is fixed (a new release,
a setting, a vendor back), `redeliver` publishes the stored event to its stream again:
the consumer that failed applies it, and every other consumer of the subject finds it in
its inbox and does nothing. That holds only while the inbox still has the event, so a
dead letter older than the inbox retention is refused.

A redelivered event arrives after the events published since: check the aggregate's
later events (`dead-letters` shows its event type and aggregate) before handing back one whose
effect they have overtaken, such as a booking message after its cancellation.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import asyncpg

from common.v1 import event_pb2
from services.common import messaging
from services.common.logging import mask_pii


@dataclass(frozen=True)
class DeadLetter:
    id: int
    consumer: str
    subject: str
    event_id: str
    event_type: str
    aggregate_id: str
    deliveries: int
    error: str
    created_at: datetime
    redelivered_at: datetime | None

    def as_dict(self) -> dict:
        return {"id": self.id, "consumer": self.consumer, "subject": self.subject, "event_id": self.event_id,
                "event_type": self.event_type, "aggregate_id": self.aggregate_id, "deliveries": self.deliveries,
                "error": self.error, "created_at": self.created_at.isoformat(),
                "redelivered_at": self.redelivered_at.isoformat() if self.redelivered_at else None}


class RedeliveryRefused(Exception):
    """A dead letter that cannot be handed back; the message says why."""


def _from_row(row: asyncpg.Record) -> DeadLetter:
    env = event_pb2.EventEnvelope()
    try:
        env.ParseFromString(row["payload"])
    except Exception:  # noqa: BLE001 - an undecodable payload is why some letters are here
        env = event_pb2.EventEnvelope()
    return DeadLetter(id=row["id"], consumer=row["consumer"], subject=row["subject"],
                      event_id=row["event_id"] or env.event_id, event_type=env.event_type,
                      aggregate_id=env.aggregate_id, deliveries=row["deliveries"],
                      error=mask_pii(row["error"]), created_at=row["created_at"],
                      redelivered_at=row["redelivered_at"])


async def pending(pool: asyncpg.Pool, *, include_redelivered: bool = False, limit: int = 100) -> list[DeadLetter]:
    """The dead letters, oldest first: by default those not handed back yet."""
    rows = await pool.fetch(
        "SELECT * FROM dead_letters WHERE $1 OR redelivered_at IS NULL ORDER BY id LIMIT $2",
        include_redelivered, limit)
    return [_from_row(r) for r in rows]


async def redeliver(pool: asyncpg.Pool, broker: messaging.Broker, dead_letter_id: int, *,
                    inbox_retention: timedelta) -> DeadLetter:
    """Publishes one dead letter's event to its subject again and marks it redelivered."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow("SELECT *, now() - created_at AS age FROM dead_letters WHERE id = $1 FOR UPDATE",
                                  dead_letter_id)
        if row is None:
            raise RedeliveryRefused(f"no dead letter {dead_letter_id}")
        letter = _from_row(row)
        if letter.redelivered_at is not None:
            raise RedeliveryRefused(f"dead letter {dead_letter_id} was redelivered at {letter.redelivered_at}")
        if row["age"] >= inbox_retention:
            raise RedeliveryRefused(
                f"dead letter {dead_letter_id} is older than the inbox retention ({inbox_retention.days} days): "
                "other consumers may no longer know they handled it; apply its effect by hand")
        # Not the event id: JetStream would drop the copy as a duplicate of the original
        # inside its window. One id per dead letter: a command run twice publishes once.
        # A duplicate ack means an earlier run published it and then failed to record that.
        await broker.js.publish(letter.subject, row["payload"],
                                headers={"Nats-Msg-Id": f"{letter.event_id}/redelivery/{letter.id}"})
        at = await conn.fetchval("UPDATE dead_letters SET redelivered_at = now() WHERE id = $1 "
                                 "RETURNING redelivered_at", dead_letter_id)
    return replace(letter, redelivered_at=at)
