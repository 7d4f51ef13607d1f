"""Periodic work: return reserved capacity at its release deadline."""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import asyncpg

from scheduling.v1 import events_pb2
from services.common import outbox
from services.scheduling.adapters import repository as repo
from services.scheduling.service_layer.rendering import ts

DEFAULT_RELEASE_HOURS = 48

_DUE = """
    SELECT p.slot_id, p.place_no, s.hospital_id, s.resource_type, s.start_at,
           coalesce(s.session_id, s.channel_id) AS resource_id, se.department, c.modality
      FROM slot_places p JOIN slots s USING (slot_id)
      LEFT JOIN sessions se ON se.session_id = s.session_id
      LEFT JOIN exam_channels c ON c.channel_id = s.channel_id
      LEFT JOIN reservation_policies rp ON rp.hospital_id = s.hospital_id AND rp.resource_type = s.resource_type
     WHERE p.pool = 'reserved' AND p.released_at IS NULL AND s.start_at > $1
       AND s.start_at - make_interval(hours => coalesce(rp.release_hours, {default})) <= $1
       AND NOT EXISTS (SELECT 1 FROM booking_items bi WHERE bi.slot_id = p.slot_id AND bi.place_no = p.place_no)
       {hospital}
     FOR UPDATE OF p SKIP LOCKED"""


async def release_due(pool: asyncpg.Pool, now: datetime, hospital_id: str | None = None) -> int:
    """Marks unbooked reserved places whose deadline passed as released, one transaction
    per hospital under its allocation lock (so no allocation books a place being released),
    with one CapacityReleased event per slot."""
    async with pool.acquire() as conn:
        hospitals = [hospital_id] if hospital_id else [r["hospital_id"] for r in await conn.fetch(
            "SELECT DISTINCT hospital_id FROM (" + _DUE.format(default=DEFAULT_RELEASE_HOURS, hospital="")
            .replace("FOR UPDATE OF p SKIP LOCKED", "") + ") due", now)]
    released = 0
    for h in hospitals:
        async with pool.acquire() as conn, conn.transaction():
            await repo.lock_hospital(conn, h)
            rows = await conn.fetch(_DUE.format(default=DEFAULT_RELEASE_HOURS, hospital="AND s.hospital_id = $2"),
                                    now, h)
            if not rows:
                continue
            await conn.executemany("UPDATE slot_places SET released_at = $3 WHERE slot_id = $1 AND place_no = $2",
                                   [(r["slot_id"], r["place_no"], now) for r in rows])
            by_slot: dict[str, list] = defaultdict(list)
            for r in rows:
                by_slot[r["slot_id"]].append(r)
            for slot_id, places in sorted(by_slot.items()):
                r = places[0]
                await outbox.add(conn, events_pb2.CapacityReleased(
                    hospital_id=h, resource_type=r["resource_type"], resource_id=slot_id,
                    start_time=ts(r["start_at"]), places=len(places), department=r["department"] or "",
                    modality=r["modality"] or ""), aggregate_id=slot_id, hospital_id=h)
            released += len(rows)
    return released
