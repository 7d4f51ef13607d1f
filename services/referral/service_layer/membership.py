"""Consortium membership published to the other services (referral.v1.InstitutionUpserted).

Written to the outbox in the transaction that creates the institution. A background job
publishes every institution never published (e.g. created before this event existed)
and republishes every one older than `refresh` (default 7 days): the REFERRAL stream
keeps 30 days, so it always holds a recent event for every institution and a new
consumer reading it from the start (DeliverPolicy.ALL) learns the full membership.
Setting `membership_published_at` to NULL republishes on the next round (a manual replay).
"""
from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from referral.v1 import events_pb2
from services.common import outbox
from services.referral.adapters.repository import _institution
from services.referral.domain.model import Institution


def event_of(i: Institution) -> events_pb2.InstitutionUpserted:
    return events_pb2.InstitutionUpserted(
        institution_id=i.institution_id, consortium_id=i.consortium_id, level=int(i.level),
        lead_hospital_id=i.lead_hospital_id or i.institution_id, parent_institution_id=i.parent_institution_id,
        distance_km=i.distance_km, display_name=i.display_name)


async def publish(conn: asyncpg.Connection, i: Institution) -> None:
    """Inside the transaction of the change."""
    await outbox.add(conn, event_of(i), aggregate_id=i.institution_id,
                     hospital_id=i.lead_hospital_id or i.institution_id)
    await conn.execute("UPDATE institutions SET membership_published_at = now() WHERE institution_id = $1",
                       i.institution_id)


async def publish_due(pool: asyncpg.Pool, now: datetime, refresh: timedelta = timedelta(days=7),
                      batch: int = 500) -> int:
    """(Re)publish institutions never published or last published before now - refresh."""
    total = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT * FROM institutions WHERE membership_published_at IS NULL OR membership_published_at < $1 "
                "ORDER BY institution_id LIMIT $2 FOR UPDATE SKIP LOCKED", now - refresh, batch)
            for row in rows:
                await publish(conn, _institution(row))
        total += len(rows)
        if len(rows) < batch:
            return total
