"""The bed manager's board: status changes, expected discharges, holds.

The board records what happens on the ward and is never refused for a booking: a bed
that will not be free on nights a booking has (a longer stay, a bed blocked) has those
bookings moved elsewhere or waitlisted in the same transaction (bookings.displace).
"""
from __future__ import annotations

from datetime import date

import asyncpg

from services.common.errors import FailedPrecondition, NotFound
from services.scheduling.adapters import repository as repo
from services.scheduling.domain import calendar
from services.scheduling.domain.beds import BedStatus, IllegalTransition, can_hold, first_bookable_night, transition
from services.scheduling.service_layer import bookings
from services.scheduling.service_layer.allocation import Scheduler, add_bed_ready


async def bed_for_update(conn, bed_id: str, hospital_id: str | None):
    """The bed, locked, under its hospital's allocation lock taken first: allocations take
    that lock before they touch a bed (the other order can deadlock with them), and a
    change that moves bookings must see the bed-nights as they do."""
    owner = await conn.fetchval("SELECT hospital_id FROM beds WHERE bed_id = $1", bed_id)
    if owner is None or (hospital_id is not None and owner != hospital_id):
        raise NotFound(f"床位 {bed_id} 不存在", reason="BED_NOT_FOUND")
    await repo.lock_hospital(conn, owner)
    return await conn.fetchrow("SELECT * FROM beds WHERE bed_id = $1 FOR UPDATE", bed_id)


async def update_status(conn, sched: Scheduler, bed_id: str, hospital_id: str | None, status: BedStatus,
                        expected_discharge: date | None) -> str:
    bed = await bed_for_update(conn, bed_id, hospital_id)
    try:
        transition(BedStatus(bed["status"]), status)
    except IllegalTransition as exc:
        raise FailedPrecondition(str(exc), reason="ILLEGAL_BED_TRANSITION") from exc
    discharge = expected_discharge if status == BedStatus.OCCUPIED else None
    await conn.execute("UPDATE beds SET status = $2, expected_discharge = $3, held_booking_id = NULL, "
                       "updated_at = now() WHERE bed_id = $1", bed_id, status.value, discharge)
    await _move_bookings_off(conn, sched, bed, status, discharge)
    return bed["hospital_id"]


async def set_expected_discharge(conn, sched: Scheduler, bed_id: str, hospital_id: str | None, day: date) -> str:
    bed = await bed_for_update(conn, bed_id, hospital_id)
    if bed["status"] != BedStatus.OCCUPIED.value:
        raise FailedPrecondition("只有在床的床位才能设置预计出院日期", reason="BED_NOT_OCCUPIED")
    await conn.execute("UPDATE beds SET expected_discharge = $2, updated_at = now() WHERE bed_id = $1", bed_id, day)
    await _move_bookings_off(conn, sched, bed, BedStatus.OCCUPIED, day)
    return bed["hospital_id"]


async def _move_bookings_off(conn, sched: Scheduler, bed, status: BedStatus, discharge: date | None) -> None:
    """Displaces the live bookings with nights on the bed before the first night it will
    be free again (none after the change: all their nights from today).

    Cleaning displaces nothing: it readies the bed within hours, and the usual discharge
    (occupied, cleaning, free) must not move the admission booked from that day. Kept
    are an admission that began before today (its patient came, or a no-show), the one
    the bed was held for, and one due today on a bed now occupied: the board cannot tell
    that patient from anyone else arriving in it today."""
    today = calendar.local_date(sched.clock())
    free_from = today if status == BedStatus.CLEANING else first_bookable_night(status, discharge, today)
    rows = await conn.fetch("""
        SELECT bi.booking_id FROM bed_nights n JOIN booking_items bi USING (item_id) JOIN bookings bk USING (booking_id)
         WHERE n.bed_id = $1 AND n.night >= $2 AND ($3::date IS NULL OR n.night < $3)
           AND bk.state IN ('TENTATIVE', 'CONFIRMED') AND bk.booking_id IS DISTINCT FROM $4::text
           AND (bi.first_night > $2 OR bi.first_night = $2 AND NOT $5)
         GROUP BY bi.booking_id ORDER BY min(bi.first_night), bi.booking_id""",
                            bed["bed_id"], today, free_from, bed["held_booking_id"], status == BedStatus.OCCUPIED)
    await bookings.displace(conn, sched, [await repo.get_booking(conn, r["booking_id"], for_update=True)
                                          for r in rows])


async def hold(conn, bed_id: str, hospital_id: str | None, booking_id: str) -> None:
    """Holds a free bed for a booking's admission; the admission's bed-nights move to it
    (the bed-night key refuses nights another booking already has)."""
    bed = await bed_for_update(conn, bed_id, hospital_id)
    booking = await repo.get_booking(conn, booking_id, for_update=True)
    if booking is None or booking["hospital_id"] != bed["hospital_id"]:
        raise NotFound(f"预约 {booking_id} 不存在", reason="BOOKING_NOT_FOUND")
    if not can_hold(BedStatus(bed["status"])):
        raise FailedPrecondition("只有空床可以预留", reason="BED_NOT_FREE")
    if booking["state"] not in ("TENTATIVE", "CONFIRMED"):
        raise FailedPrecondition("预约已失效", reason="BOOKING_NOT_LIVE")
    item = await conn.fetchrow("SELECT * FROM booking_items WHERE booking_id = $1 AND kind = 'ADMISSION'", booking_id)
    if item is None:
        raise FailedPrecondition("该预约不含住院", reason="NO_ADMISSION")
    if item["bed_id"] != bed_id:
        try:
            async with conn.transaction():
                await conn.execute("UPDATE bed_nights SET bed_id = $2 WHERE item_id = $1", item["item_id"], bed_id)
                await conn.execute("UPDATE booking_items SET bed_id = $2 WHERE item_id = $1", item["item_id"], bed_id)
        except asyncpg.UniqueViolationError as exc:
            raise FailedPrecondition("该床位在此住院期间已被其他预约占用", reason="BED_NIGHTS_TAKEN") from exc
        await conn.execute("UPDATE beds SET status = 'FREE', held_booking_id = NULL, updated_at = now() "
                           "WHERE held_booking_id = $1 AND bed_id <> $2", booking_id, bed_id)
    await conn.execute("UPDATE beds SET status = 'HELD', held_booking_id = $2, updated_at = now() WHERE bed_id = $1",
                       bed_id, booking_id)
    await add_bed_ready(conn, booking, bed_id)


async def release_hold(conn, bed_id: str, hospital_id: str | None) -> str:
    bed = await bed_for_update(conn, bed_id, hospital_id)
    if bed["status"] != BedStatus.HELD.value:
        raise FailedPrecondition("该床位没有预留", reason="BED_NOT_HELD")
    await conn.execute("UPDATE beds SET status = 'FREE', held_booking_id = NULL, updated_at = now() "
                       "WHERE bed_id = $1", bed_id)
    return bed["hospital_id"]
