"""Periodic work: return reserved capacity at its release deadline.

Slots: an unbooked reserved place of a slot starting at T is released at
T - release_hours (the hospital's outpatient / exam policy).

Beds: night N of a reserved-pool bed starts at the admission time of day N (09:00 local,
``rendering.ADMIT_MINUTE``); if no booking holds that bed-night at N's start -
release_hours (the hospital's bed policy, default 24 h), it is released to the general
pool: a row in bed_night_releases and one CapacityReleased (resource_type "bed") per bed
and run, naming the nights. Only nights the bed board offers are released (an occupied
bed before its expected discharge, a cleaning or blocked bed is in use, not idle
reserve). The engine and ListAvailability no longer offer released bed-nights;
GetUtilization counts them as released.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

import asyncpg

from common.v1 import types_pb2
from scheduling.v1 import events_pb2
from services.common import outbox
from services.scheduling.adapters import repository as repo
from services.scheduling.domain import calendar
from services.scheduling.domain.beds import BedStatus, first_bookable_night
from services.scheduling.domain.policy import DEFAULT_RELEASE_HOURS, URGENT_WINDOW_HOURS
from services.scheduling.service_layer.rendering import ADMIT_MINUTE, ts

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
    with one CapacityReleased event per slot; then the reserved bed-nights due."""
    slots = await _release_due_slots(pool, now, hospital_id)
    return slots + await release_due_beds(pool, now, hospital_id)


async def _release_due_slots(pool: asyncpg.Pool, now: datetime, hospital_id: str | None = None) -> int:
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


def _night_start(night) -> datetime:
    return calendar.at(night, ADMIT_MINUTE)


async def policies_releasing_too_early(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Stored policies whose release deadline leaves urgent referrals no reserved capacity:
    set before SetReservationPolicy refused such a deadline, and still applied as set."""
    async with pool.acquire() as conn:
        return await conn.fetch("SELECT hospital_id, resource_type, release_hours FROM reservation_policies "
                                "WHERE release_hours >= $1 ORDER BY hospital_id, resource_type", URGENT_WINDOW_HOURS)


async def release_due_beds(pool: asyncpg.Pool, now: datetime, hospital_id: str | None = None) -> int:
    """Releases the reserved bed-nights whose deadline passed unbooked (module docstring)."""
    today = calendar.local_date(now)
    async with pool.acquire() as conn:
        hospitals = [hospital_id] if hospital_id else [r["hospital_id"] for r in await conn.fetch(
            "SELECT DISTINCT hospital_id FROM beds WHERE pool = 'reserved'")]
    released = 0
    for h in hospitals:
        async with pool.acquire() as conn, conn.transaction():
            await repo.lock_hospital(conn, h)
            hours = await conn.fetchval("SELECT release_hours FROM reservation_policies WHERE hospital_id = $1 "
                                        "AND resource_type = 'bed'", h)
            hours = DEFAULT_RELEASE_HOURS if hours is None else hours
            last = calendar.local_date(now + timedelta(hours=hours)) + timedelta(days=1)
            beds = await conn.fetch("""
                SELECT b.bed_id, b.status, b.expected_discharge, w.ward_id, w.department
                  FROM beds b JOIN rooms r USING (room_id) JOIN wards w USING (ward_id)
                 WHERE b.hospital_id = $1 AND b.pool = 'reserved' ORDER BY b.bed_id FOR UPDATE OF b""", h)
            if not beds:
                continue
            closed = {(r["bed_id"], r["night"]) for r in await conn.fetch("""
                SELECT n.bed_id, n.night FROM bed_nights n JOIN beds b USING (bed_id)
                 WHERE b.hospital_id = $1 AND n.night BETWEEN $2 AND $3
                UNION SELECT x.bed_id, x.night FROM bed_night_releases x JOIN beds b USING (bed_id)
                 WHERE b.hospital_id = $1 AND x.night BETWEEN $2 AND $3""", h, today, last)}
            rows = []
            for b in beds:
                first = first_bookable_night(BedStatus(b["status"]), b["expected_discharge"], today)
                if first is None:
                    continue
                nights = []
                night = max(today, first)
                while night <= last and _night_start(night) - timedelta(hours=hours) <= now:
                    if (b["bed_id"], night) not in closed:
                        nights.append(night)
                    night += timedelta(days=1)
                if nights:
                    rows.append((b, nights))
            if not rows:
                continue
            await conn.executemany("INSERT INTO bed_night_releases (bed_id, night, released_at) VALUES ($1, $2, $3) "
                                   "ON CONFLICT DO NOTHING",
                                   [(b["bed_id"], n, now) for b, nights in rows for n in nights])
            for b, nights in rows:
                await outbox.add(conn, events_pb2.CapacityReleased(
                    hospital_id=h, resource_type="bed", resource_id=b["bed_id"],
                    start_time=ts(_night_start(nights[0])), places=len(nights), department=b["department"],
                    ward_id=b["ward_id"],
                    nights=[types_pb2.Date(year=n.year, month=n.month, day=n.day) for n in nights]),
                    aggregate_id=b["bed_id"], hospital_id=h)
                released += len(nights)
    return released
