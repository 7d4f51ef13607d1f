"""Read models: availability, utilization, the bed board."""
from __future__ import annotations

import json
from collections import Counter
from datetime import date, datetime, timedelta

from common.v1 import types_pb2
from scheduling.v1 import events_pb2, scheduling_service_pb2 as pb
from services.scheduling.adapters import repository as repo
from services.scheduling.domain import calendar
from services.scheduling.domain.beds import BedStatus, first_bookable_night
from services.scheduling.service_layer.engine_adapter import policies as ea_policies
from services.scheduling.service_layer.rendering import ts

_TITLE = {"EXPERT": pb.DOCTOR_TITLE_EXPERT, "GENERAL": pb.DOCTOR_TITLE_GENERAL}
_RTYPE = {"outpatient": pb.RESOURCE_TYPE_OUTPATIENT, "exam": pb.RESOURCE_TYPE_EXAM, "bed": pb.RESOURCE_TYPE_BED}
_BED = {s.value: getattr(pb, f"BED_STATUS_{s.value}") for s in BedStatus}
_GP = {"MALE": pb.GENDER_POLICY_MALE, "FEMALE": pb.GENDER_POLICY_FEMALE,
       "SAME_GENDER": pb.GENDER_POLICY_SAME_GENDER, "ANY": pb.GENDER_POLICY_ANY}


def pb_date(d: date | None) -> types_pb2.Date | None:
    return types_pb2.Date(year=d.year, month=d.month, day=d.day) if d else None


async def availability(conn, hospital_id: str, kind: str | None, department: str, modality: str,
                       first: date, last: date, now: datetime) -> pb.ListAvailabilityResponse:
    """Only what a clinic may book now: reserved places of slots already open to clinics
    (early opening, policy.py) and reserved bed-nights not released to the general pool."""
    out = pb.ListAvailabilityResponse()
    lo, hi = max(now, calendar.at(first, 0)), calendar.at(last + timedelta(days=1), 0)
    pols = await ea_policies(conn, hospital_id)
    today = calendar.local_date(now)
    open_out, open_exam = (calendar.at(pols[t].last_open_day(today) + timedelta(days=1), 0) for t in ("outpatient", "exam"))
    if kind in (None, "outpatient", "exam"):
        rows = await conn.fetch("""
            SELECT s.slot_id, s.resource_type, s.start_at, s.length_minutes, se.department, se.doctor_name, se.title,
                   c.modality, c.preparation, coalesce(se.building, c.building) AS building,
                   coalesce(se.floor, c.floor) AS floor, coalesce(se.room, c.room) AS room, h.name AS hospital_name,
                   count(*) AS free
              FROM slots s JOIN slot_places p USING (slot_id)
              LEFT JOIN sessions se ON se.session_id = s.session_id
              LEFT JOIN exam_channels c ON c.channel_id = s.channel_id
              LEFT JOIN hospitals h ON h.hospital_id = s.hospital_id
             WHERE s.hospital_id = $1 AND s.start_at > $2 AND s.start_at < $3
               AND ($4::text IS NULL OR s.resource_type = $4)
               AND ($5 = '' OR se.department = $5) AND ($6 = '' OR c.modality = $6)
               AND s.start_at < CASE s.resource_type WHEN 'outpatient' THEN $7::timestamptz ELSE $8::timestamptz END
               AND p.pool = 'reserved' AND p.released_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM booking_items bi WHERE bi.slot_id = p.slot_id AND bi.place_no = p.place_no)
             GROUP BY s.slot_id, se.session_id, c.channel_id, h.name ORDER BY s.start_at, s.slot_id LIMIT 2000""",
                                hospital_id, lo, hi, kind if kind != "bed" else None, department, modality,
                                open_out, open_exam)
        for r in rows:
            out.slots.append(pb.AvailableSlot(
                slot_id=r["slot_id"], resource_type=_RTYPE[r["resource_type"]], department=r["department"] or "",
                modality=r["modality"] or "", doctor_name=r["doctor_name"] or "",
                title=_TITLE.get(r["title"], pb.DOCTOR_TITLE_UNSPECIFIED), start_time=ts(r["start_at"]),
                end_time=ts(r["start_at"] + timedelta(minutes=r["length_minutes"])), free_places=r["free"],
                place=events_pb2.Place(hospital_name=r["hospital_name"] or "", building=r["building"] or "",
                                       floor=r["floor"] or "", room=r["room"] or ""),
                preparation=r["preparation"] or ""))
    if kind in (None, "bed"):
        free = await _free_bed_nights(conn, hospital_id, first, last, today, pool="reserved", department=department)
        for (ward, dept, night), n in sorted(free.items()):
            out.beds.append(pb.AvailableBeds(ward_id=ward, department=dept, night=pb_date(night), free_beds=n))
    return out


async def _free_bed_nights(conn, hospital_id: str, first: date, last: date, today: date, *, pool: str,
                           department: str = "") -> Counter:
    """Bed-nights of a pool from `first` to `last` that the bed board offers (see
    `first_bookable_night`) and no booking or release took, by (ward, department, night)."""
    beds = await conn.fetch("""
        SELECT b.bed_id, b.status, b.expected_discharge, w.ward_id, w.department FROM beds b
          JOIN rooms r USING (room_id) JOIN wards w USING (ward_id)
         WHERE b.hospital_id = $1 AND b.pool = $2 AND ($3 = '' OR w.department = $3)""",
                            hospital_id, pool, department)
    taken = {(r["bed_id"], r["night"]) for r in await conn.fetch(
        "SELECT n.bed_id, n.night FROM bed_nights n JOIN beds b USING (bed_id) WHERE b.hospital_id = $1 "
        "AND n.night BETWEEN $2 AND $3", hospital_id, first, last)}
    taken |= {(r["bed_id"], r["night"]) for r in await repo.released_bed_nights(conn, hospital_id, first, last)}
    free: Counter = Counter()
    for b in beds:
        start = first_bookable_night(BedStatus(b["status"]), b["expected_discharge"], today)
        if start is None:
            continue
        night = max(first, start)
        while night <= last:
            if (b["bed_id"], night) not in taken:
                free[(b["ward_id"], b["department"], night)] += 1
            night += timedelta(days=1)
    return free


async def utilization(conn, hospital_id: str, first: date, last: date, now: datetime) -> pb.Utilization:
    lo, hi = calendar.at(first, 0), calendar.at(last + timedelta(days=1), 0)
    out = pb.Utilization(hospital_id=hospital_id)
    for r in await conn.fetch("""
        SELECT s.resource_type, p.pool, count(*) AS places, count(bi.item_id) AS booked,
               count(*) FILTER (WHERE p.released_at IS NOT NULL) AS released,
               count(*) FILTER (WHERE p.pool = 'reserved' AND bi.item_id IS NULL AND p.released_at IS NULL
                                AND s.start_at <= $4) AS wasted,
               count(*) FILTER (WHERE bk.state = 'NO_SHOW') AS no_show,
               count(*) FILTER (WHERE bi.item_id IS NULL AND p.released_at IS NULL AND s.start_at > $4) AS open
          FROM slot_places p JOIN slots s USING (slot_id)
          LEFT JOIN booking_items bi ON bi.slot_id = p.slot_id AND bi.place_no = p.place_no
          LEFT JOIN bookings bk ON bk.booking_id = bi.booking_id
         WHERE s.hospital_id = $1 AND s.start_at >= $2 AND s.start_at < $3
         GROUP BY 1, 2 ORDER BY 1, 2""", hospital_id, lo, hi, now):
        out.pools.append(pb.PoolUtilization(
            resource_type=_RTYPE[r["resource_type"]], pool=r["pool"], places=r["places"], booked=r["booked"],
            released=r["released"], wasted=r["wasted"], no_show=r["no_show"], open=r["open"]))
    for r in await conn.fetch("""
        SELECT b.pool, count(*) * ($3::date - $2::date + 1) AS places,
               (SELECT count(*) FROM bed_nights n JOIN beds x USING (bed_id) JOIN booking_items bi USING (item_id)
                 JOIN bookings bk USING (booking_id)
                 WHERE x.hospital_id = $1 AND x.pool = b.pool AND n.night BETWEEN $2 AND $3) AS booked,
               (SELECT count(*) FROM bed_nights n JOIN beds x USING (bed_id) JOIN booking_items bi USING (item_id)
                 JOIN bookings bk USING (booking_id)
                 WHERE x.hospital_id = $1 AND x.pool = b.pool AND n.night BETWEEN $2 AND $3
                   AND bk.state = 'NO_SHOW') AS no_show,
               (SELECT count(*) FROM bed_night_releases n JOIN beds x USING (bed_id)
                 WHERE x.hospital_id = $1 AND x.pool = b.pool AND n.night BETWEEN $2 AND $3) AS released
          FROM beds b WHERE b.hospital_id = $1 GROUP BY b.pool ORDER BY b.pool""", hospital_id, first, last):
        free = await _free_bed_nights(conn, hospital_id, first, last, calendar.local_date(now), pool=r["pool"])
        out.pools.append(pb.PoolUtilization(resource_type=pb.RESOURCE_TYPE_BED, pool=r["pool"], places=r["places"],
                                            booked=r["booked"], no_show=r["no_show"], released=r["released"],
                                            open=sum(free.values())))
    raw = await conn.fetchval("SELECT clinic_quotas FROM reservation_policies WHERE hospital_id = $1 "
                              "AND resource_type = 'outpatient'", hospital_id)
    quotas = (json.loads(raw) if isinstance(raw, str) else raw) or {}
    clinics = {}
    for r in await conn.fetch("""
        SELECT r.sending_institution_id AS clinic,
               count(*) FILTER (WHERE bk.state IN ('TENTATIVE', 'CONFIRMED', 'ARRIVED', 'NO_SHOW')) AS booked,
               count(*) FILTER (WHERE bk.state = 'NO_SHOW') AS no_show,
               count(*) FILTER (WHERE bk.state = 'CANCELLED') AS cancelled,
               count(DISTINCT r.referral_id) FILTER (WHERE r.state = 'WAITLISTED') AS waitlisted
          FROM referrals r LEFT JOIN bookings bk USING (referral_id)
         WHERE r.hospital_id = $1 AND r.accepted_at >= $2 AND r.accepted_at < $3
         GROUP BY 1 ORDER BY 1""", hospital_id, lo, hi):
        clinics[r["clinic"]] = pb.ClinicUtilization(
            clinic_id=r["clinic"], booked=r["booked"], no_show=r["no_show"], cancelled=r["cancelled"],
            waitlisted=r["waitlisted"], quota=int(quotas.get(r["clinic"], 0)))
    for clinic, places in quotas.items():
        clinics.setdefault(clinic, pb.ClinicUtilization(clinic_id=clinic, quota=int(places)))
    out.clinics.extend(clinics[k] for k in sorted(clinics))
    return out


async def bed_board(conn, hospital_id: str, ward_id: str, today: date, bed_id: str = "") -> pb.BedBoard:
    rows = await conn.fetch("""
        SELECT b.*, r.ward_id, r.gender_policy, r.equipment, w.department, bk.referral_id AS held_referral_id,
               (SELECT count(*) FROM bed_nights n WHERE n.bed_id = b.bed_id AND n.night >= $3) AS booked_nights
          FROM beds b JOIN rooms r USING (room_id) JOIN wards w USING (ward_id)
          LEFT JOIN bookings bk ON bk.booking_id = b.held_booking_id
         WHERE b.hospital_id = $1 AND ($2 = '' OR r.ward_id = $2) AND ($4 = '' OR b.bed_id = $4)
         ORDER BY r.ward_id, b.room_id, b.bed_id""", hospital_id, ward_id, today, bed_id)
    board = pb.BedBoard(hospital_id=hospital_id)
    for r in rows:
        state = pb.BedState(
            bed_id=r["bed_id"], ward_id=r["ward_id"], room_id=r["room_id"], label=r["label"],
            department=r["department"], status=_BED[r["status"]], held_booking_id=r["held_booking_id"] or "",
            held_referral_id=r["held_referral_id"] or "", gender_policy=_GP[r["gender_policy"]],
            equipment=list(r["equipment"]), update_time=ts(r["updated_at"]), booked_nights=r["booked_nights"])
        if r["expected_discharge"]:
            state.expected_discharge_date.CopyFrom(pb_date(r["expected_discharge"]))
        board.beds.append(state)
    return board
