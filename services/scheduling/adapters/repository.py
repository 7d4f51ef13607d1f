"""asyncpg queries of the scheduling schema. Every function runs on the caller's
connection, inside the caller's transaction when it writes."""
from __future__ import annotations

from datetime import date, datetime

import asyncpg

# Places still held by a booking item; `movable` bookings' places count as free because
# the run that loads them may move those bookings.
_HELD = """EXISTS (SELECT 1 FROM booking_items bi WHERE bi.slot_id = p.slot_id AND bi.place_no = p.place_no
                   AND NOT (bi.booking_id = ANY($4::text[])))"""


async def lock_hospital(conn: asyncpg.Connection, hospital_id: str) -> None:
    """Serialises allocation runs of one hospital so each sees a consistent state; the
    unique keys still guard against any writer that does not take it."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"scheduling:{hospital_id}")


async def outpatient_capacity(conn, hospital_id: str, start: datetime, end: datetime,
                              movable: list[str]) -> list[asyncpg.Record]:
    return await conn.fetch(f"""
        SELECT s.slot_id, s.start_at, s.length_minutes, se.session_id, se.department, se.doctor_id, se.title,
               count(*) FILTER (WHERE p.pool = 'reserved' AND p.released_at IS NULL AND NOT {_HELD}) AS reserved_free,
               count(*) FILTER (WHERE p.pool = 'overflow' AND NOT {_HELD}) AS overflow_free
          FROM slots s JOIN sessions se USING (session_id) JOIN slot_places p USING (slot_id)
         WHERE s.hospital_id = $1 AND s.resource_type = 'outpatient' AND s.start_at > $2 AND s.start_at < $3
         GROUP BY s.slot_id, se.session_id""", hospital_id, start, end, movable)


async def exam_capacity(conn, hospital_id: str, start: datetime, end: datetime,
                        movable: list[str]) -> list[asyncpg.Record]:
    return await conn.fetch(f"""
        SELECT s.slot_id, s.start_at, s.length_minutes, c.modality, c.device_id, c.room, p.pool
          FROM slots s JOIN exam_channels c USING (channel_id) JOIN slot_places p USING (slot_id)
         WHERE s.hospital_id = $1 AND s.resource_type = 'exam' AND s.start_at > $2 AND s.start_at < $3
           AND (p.pool = 'overflow' OR p.released_at IS NULL) AND NOT {_HELD}""",
                            hospital_id, start, end, movable)


async def next_slot_start(conn, hospital_id: str, after: datetime) -> datetime | None:
    """The start of the hospital's next outpatient or exam slot, taken or not."""
    return await conn.fetchval("""
        SELECT least((SELECT min(start_at) FROM slots WHERE hospital_id = $1 AND resource_type = 'outpatient'
                                                        AND start_at > $2),
                     (SELECT min(start_at) FROM slots WHERE hospital_id = $1 AND resource_type = 'exam'
                                                        AND start_at > $2))""", hospital_id, after)


async def department_name(conn, hospital_id: str, department: str) -> str | None:
    """The name the hospital last published for a department (sessions.department_name)."""
    return await conn.fetchval("SELECT department_name FROM sessions WHERE hospital_id = $1 AND department = $2 "
                               "AND department_name <> '' ORDER BY day DESC LIMIT 1", hospital_id, department)


async def preparation_days(conn, hospital_id: str) -> dict[str, int]:
    rows = await conn.fetch("SELECT modality, max(preparation_days) AS days FROM exam_channels "
                            "WHERE hospital_id = $1 GROUP BY modality", hospital_id)
    return {r["modality"]: r["days"] for r in rows}


async def exam_channel_rules(conn, hospital_id: str) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT modality, contrast_agent, required_results, contraindications FROM exam_channels "
                            "WHERE hospital_id = $1 ORDER BY channel_id", hospital_id)


async def released_bed_nights(conn, hospital_id: str, first: date, last: date) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT r.bed_id, r.night FROM bed_night_releases r JOIN beds b USING (bed_id) "
                            "WHERE b.hospital_id = $1 AND r.night BETWEEN $2 AND $3", hospital_id, first, last)


async def released_reserved_places(conn, hospital_id: str, resource_type: str, what: str, days: list[date],
                                   after: datetime) -> bool:
    """Whether reserved places of `what` (a department, or an exam modality) starting after
    `after` on one of `days` went back to the general pool at their release deadline."""
    return await conn.fetchval("""
        SELECT EXISTS (
          SELECT 1 FROM slot_places p JOIN slots s USING (slot_id)
            LEFT JOIN sessions se ON se.session_id = s.session_id
            LEFT JOIN exam_channels c ON c.channel_id = s.channel_id
           WHERE s.hospital_id = $1 AND s.resource_type = $2 AND p.pool = 'reserved' AND p.released_at IS NOT NULL
             AND coalesce(se.department, c.modality) = $3 AND s.start_at > $4
             AND (s.start_at AT TIME ZONE 'Asia/Shanghai')::date = ANY($5::date[]))""",
        hospital_id, resource_type, what, after, days)


async def released_reserved_nights(conn, hospital_id: str, department: str | None, nights: list[date]) -> bool:
    """Whether reserved bed-nights of `department` (of any ward when None) on one of `nights`
    went back to the general pool at their release deadline."""
    return await conn.fetchval("""
        SELECT EXISTS (
          SELECT 1 FROM bed_night_releases n JOIN beds b USING (bed_id) JOIN rooms r USING (room_id)
            JOIN wards w USING (ward_id)
           WHERE b.hospital_id = $1 AND ($2::text IS NULL OR w.department = $2) AND n.night = ANY($3::date[]))""",
        hospital_id, department, nights)


async def beds(conn, hospital_id: str) -> list[asyncpg.Record]:
    return await conn.fetch("""
        SELECT b.bed_id, b.pool, b.status, b.expected_discharge, b.room_id, r.capacity, r.gender_policy,
               r.equipment, w.ward_id, w.department, w.min_age, w.max_age, w.specialisms
          FROM beds b JOIN rooms r USING (room_id) JOIN wards w USING (ward_id)
         WHERE b.hospital_id = $1 ORDER BY b.bed_id""", hospital_id)


async def bed_nights(conn, hospital_id: str, first: date, last: date, movable: list[str]) -> list[asyncpg.Record]:
    return await conn.fetch("""
        SELECT n.bed_id, n.night, n.gender, b.room_id
          FROM bed_nights n JOIN beds b USING (bed_id) JOIN booking_items bi USING (item_id)
         WHERE b.hospital_id = $1 AND n.night BETWEEN $2 AND $3 AND NOT (bi.booking_id = ANY($4::text[]))""",
                            hospital_id, first, last, movable)


async def free_place(conn, slot_id: str, pool: str) -> int | None:
    """A free place of the slot in the pool the engine charged ('reserved' or 'overflow'):
    taking another pool's place would leave the engine's plan for the next referral short."""
    return await conn.fetchval("""
        SELECT place_no FROM slot_places p
         WHERE slot_id = $1 AND pool = $2 AND (pool = 'overflow' OR released_at IS NULL)
           AND NOT EXISTS (SELECT 1 FROM booking_items bi WHERE bi.slot_id = p.slot_id AND bi.place_no = p.place_no)
         ORDER BY place_no LIMIT 1""", slot_id, pool)


# --------------------------------------------------------------------------- referrals


async def get_referral(conn, referral_id: str, *, for_update: bool = False) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(f"SELECT * FROM referrals WHERE referral_id = $1{lock}", referral_id)


async def save_referral(conn, *, referral_id: str, hospital_id: str, sending_institution_id: str,
                        snapshot: bytes, accepted_at: datetime, state: str, reason_code: str = "",
                        reason: str = "") -> None:
    await conn.execute("""
        INSERT INTO referrals (referral_id, hospital_id, sending_institution_id, snapshot, accepted_at,
                               state, reason_code, reason)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (referral_id) DO UPDATE SET snapshot = EXCLUDED.snapshot, state = EXCLUDED.state,
               reason_code = EXCLUDED.reason_code, reason = EXCLUDED.reason, updated_at = now()""",
                       referral_id, hospital_id, sending_institution_id, snapshot, accepted_at, state,
                       reason_code, reason)


async def set_referral_state(conn, referral_id: str, state: str, reason_code: str = "", reason: str = "") -> None:
    await conn.execute("UPDATE referrals SET state = $2, reason_code = $3, reason = $4, updated_at = now() "
                       "WHERE referral_id = $1", referral_id, state, reason_code, reason)


async def waitlisted(conn, hospital_id: str) -> list[asyncpg.Record]:
    """Every referral on the list, however long it has waited: the clinic was told it
    stays there until placed (allocation.WAITLIST_NOTE)."""
    return await conn.fetch("SELECT * FROM referrals WHERE hospital_id = $1 AND state = 'WAITLISTED' "
                            "ORDER BY accepted_at, referral_id", hospital_id)


async def hospitals_with_waitlist(conn) -> list[str]:
    rows = await conn.fetch("SELECT DISTINCT hospital_id FROM referrals WHERE state = 'WAITLISTED'")
    return [r["hospital_id"] for r in rows]


# --------------------------------------------------------------------------- bookings


async def live_booking_of(conn, referral_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM bookings WHERE referral_id = $1 AND state <> 'CANCELLED' "
                               "AND superseded_at IS NULL", referral_id)


async def get_booking(conn, booking_id: str, *, for_update: bool = False) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(f"SELECT * FROM bookings WHERE booking_id = $1{lock}", booking_id)


async def insert_booking(conn, *, booking_id: str, referral_id: str, hospital_id: str,
                         sending_institution_id: str) -> None:
    await conn.execute("INSERT INTO bookings (booking_id, referral_id, hospital_id, sending_institution_id, state) "
                       "VALUES ($1, $2, $3, $4, 'TENTATIVE')", booking_id, referral_id, hospital_id,
                       sending_institution_id)


async def set_booking_state(conn, booking_id: str, state: str) -> None:
    await conn.execute("UPDATE bookings SET state = $2, updated_at = now() WHERE booking_id = $1",
                       booking_id, state)


async def set_scheduled_event(conn, booking_id: str, event_id: str) -> None:
    await conn.execute("UPDATE bookings SET scheduled_event_id = $2, updated_at = now() WHERE booking_id = $1",
                       booking_id, event_id)


async def insert_slot_item(conn, *, item_id: str, booking_id: str, need_id: str, engine_item_id: str,
                           kind: str, slot_id: str, place_no: int, instruction: str = "") -> None:
    await conn.execute("INSERT INTO booking_items (item_id, booking_id, need_id, engine_item_id, kind, slot_id, place_no, "
                       "instruction) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", item_id, booking_id, need_id,
                       engine_item_id, kind, slot_id, place_no, instruction)


async def insert_bed_item(conn, *, item_id: str, booking_id: str, need_id: str, bed_id: str,
                          nights: list[date], gender: str | None) -> None:
    await conn.execute("INSERT INTO booking_items (item_id, booking_id, need_id, engine_item_id, kind, bed_id, "
                       "first_night, nights) VALUES ($1, $2, $3, 'admission', 'ADMISSION', $4, $5, $6)",
                       item_id, booking_id, need_id, bed_id, nights[0], len(nights))
    await conn.executemany("INSERT INTO bed_nights (bed_id, night, item_id, gender) VALUES ($1, $2, $3, $4)",
                           [(bed_id, n, item_id, gender) for n in nights])


async def delete_items(conn, booking_id: str) -> None:
    await conn.execute("DELETE FROM booking_items WHERE booking_id = $1", booking_id)


async def items(conn, booking_id: str) -> list[asyncpg.Record]:
    return await conn.fetch("""
        SELECT bi.*, s.start_at, s.length_minutes, se.department AS session_department, se.doctor_name,
               coalesce(se.building, c.building) AS building, coalesce(se.floor, c.floor) AS floor,
               coalesce(se.room, c.room) AS room, c.modality, c.preparation,
               b.label AS bed_label, r.label AS room_label, w.name AS ward_name, w.department AS ward_department,
               w.building AS ward_building, w.floor AS ward_floor, h.name AS hospital_name
          FROM booking_items bi JOIN bookings bk USING (booking_id)
          LEFT JOIN hospitals h ON h.hospital_id = bk.hospital_id
          LEFT JOIN slots s ON s.slot_id = bi.slot_id
          LEFT JOIN sessions se ON se.session_id = s.session_id
          LEFT JOIN exam_channels c ON c.channel_id = s.channel_id
          LEFT JOIN beds b ON b.bed_id = bi.bed_id
          LEFT JOIN rooms r ON r.room_id = b.room_id
          LEFT JOIN wards w ON w.ward_id = r.ward_id
         WHERE bi.booking_id = $1
         ORDER BY coalesce(s.start_at, bi.first_night::timestamptz), bi.item_id""", booking_id)


async def tentative_bookings(conn, hospital_id: str) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT b.*, r.snapshot, r.accepted_at FROM bookings b JOIN referrals r USING (referral_id) "
                            "WHERE b.hospital_id = $1 AND b.state = 'TENTATIVE' ORDER BY b.created_at", hospital_id)


async def confirm_sent(conn, hospital_id: str | None = None) -> int:
    """A booking counts as sent to the patient once its ReferralScheduled event left the
    outbox (PubAck): from then on it is CONFIRMED and never moved."""
    result = await conn.execute("""
        UPDATE bookings b SET state = 'CONFIRMED', updated_at = now() FROM outbox o
         WHERE b.state = 'TENTATIVE' AND o.event_id = b.scheduled_event_id AND o.sent_at IS NOT NULL
           AND ($1::text IS NULL OR b.hospital_id = $1)""", hospital_id)
    return int(result.split()[-1])


async def hospital_name(conn, hospital_id: str) -> str:
    return await conn.fetchval("SELECT name FROM hospitals WHERE hospital_id = $1", hospital_id) or ""


async def upsert_hospital(conn, hospital_id: str, name: str) -> None:
    await conn.execute("INSERT INTO hospitals (hospital_id, name) VALUES ($1, $2) ON CONFLICT (hospital_id) "
                       "DO UPDATE SET name = CASE WHEN EXCLUDED.name = '' THEN hospitals.name ELSE EXCLUDED.name END",
                       hospital_id, name)


async def supersede_no_show(conn, referral_id: str) -> bool:
    """A no-show rebooked by the hospital: the old booking stays (places counted as used)
    but no longer stands in the way of a fresh placement."""
    return await conn.fetchval(
        "UPDATE bookings SET superseded_at = now(), updated_at = now() WHERE referral_id = $1 "
        "AND state = 'NO_SHOW' AND superseded_at IS NULL RETURNING true", referral_id) or False
