"""A booking after it was made: cancelled, moved, attended or missed."""
from __future__ import annotations

from datetime import date, datetime

import asyncpg

from referral.v1 import types_pb2 as rtypes
from scheduling.v1 import events_pb2
from services.common import outbox
from services.common.errors import FailedPrecondition
from services.common.logging import get_logger
from services.scheduling.adapters import repository as repo
from services.scheduling.domain import calendar
from services.scheduling.service_layer import engine_adapter as ea
from services.scheduling.service_layer.allocation import (
    WAITLIST_NOTE, PlaceGone, Scheduler, add_rescheduled, hold_today_beds, release_held_bed, rewrite_items,
    waitlist)

log = get_logger(__name__)

LIVE = ("TENTATIVE", "CONFIRMED")


async def cancel(conn: asyncpg.Connection, booking, reason: str, request_id: str = "") -> None:
    """Frees every place of the booking and tells everyone; the caller wakes re-optimisation."""
    await repo.lock_hospital(conn, booking["hospital_id"])
    await release_held_bed(conn, booking["booking_id"])
    await repo.delete_items(conn, booking["booking_id"])
    await repo.set_booking_state(conn, booking["booking_id"], "CANCELLED")
    await outbox.add(conn, events_pb2.BookingCancelled(
        referral_id=booking["referral_id"], booking_id=booking["booking_id"], hospital_id=booking["hospital_id"],
        sending_institution_id=booking["sending_institution_id"], reason=reason),
        aggregate_id=booking["referral_id"], hospital_id=booking["hospital_id"], request_id=request_id)


async def cancel_referral(conn, referral_id: str, reason: str) -> str | None:
    """The referral was withdrawn: off the waitlist, and its booking cancelled. Returns
    the hospital whose capacity was freed, if any."""
    known = await repo.get_referral(conn, referral_id, for_update=True)
    if known is None:
        return None
    await repo.set_referral_state(conn, referral_id, "CANCELLED", "REFERRAL_CANCELLED", reason)
    live = await repo.live_booking_of(conn, referral_id)
    if live is None or live["state"] not in LIVE:
        return None
    await cancel(conn, live, reason or "转诊已取消")
    return live["hospital_id"]


async def mark(conn, referral_id: str, state: str, today: date | None = None) -> str | None:
    """Arrived or no-show: the places stay used (a no-show's place counts as such). Of a
    no-show's admission only the first night (and any night already past) stays used:
    the rest of the planned stay would stand empty, so those nights and a bed held for it
    go back to the board. Returns the hospital whose capacity was freed, if any."""
    if await repo.get_referral(conn, referral_id, for_update=True) is None:
        return None
    await repo.set_referral_state(conn, referral_id, state)
    live = await repo.live_booking_of(conn, referral_id)
    if live is None:
        return None
    await repo.set_booking_state(conn, live["booking_id"], state)
    if state != "NO_SHOW":
        return None
    today = today or calendar.local_date(datetime.now(calendar.LOCAL))
    await release_held_bed(conn, live["booking_id"])
    freed = await conn.fetchval("""
        WITH freed AS (DELETE FROM bed_nights n USING booking_items bi
                        WHERE n.item_id = bi.item_id AND bi.booking_id = $1 AND n.night > bi.first_night
                          AND n.night >= $2 RETURNING 1)
        SELECT count(*) FROM freed""", live["booking_id"], today)
    return live["hospital_id"] if freed else None


async def reschedule(conn, sched: Scheduler, booking, dates: list, reason: str, request_id: str = "",
                     now: datetime | None = None) -> None:
    """Moves a live booking to the best places now (the patient's new days, if given);
    when nothing fits, nothing changes."""
    if booking["state"] not in LIVE:
        raise FailedPrecondition("只能改约未就诊的有效预约", reason="BOOKING_NOT_LIVE")
    now = now or sched.clock()
    await repo.lock_hospital(conn, booking["hospital_id"])
    referral = await repo.get_referral(conn, booking["referral_id"], for_update=True)
    snapshot = rtypes.ReferralSnapshot.FromString(referral["snapshot"])
    if dates:
        del snapshot.available_dates[:]
        snapshot.available_dates.extend(dates)
    horizon = sched.horizon(now)
    capacity = await ea.load_capacity(conn, booking["hospital_id"], horizon, now, [booking["booking_id"]])
    demand = ea.referral_demand(snapshot, referral["accepted_at"], horizon, capacity.prep_days,
                                rules=capacity.exam_rules)
    solution = await sched.solve(ea.problem(horizon, capacity, [demand]), "reschedule")
    if snapshot.referral_id not in solution.placed_referral_ids():
        why = solution.unplaced_by_id().get(snapshot.referral_id)
        text = await ea.reason_text(conn, booking["hospital_id"], why, horizon) if why else ""
        raise FailedPrecondition(f"没有可改约的号源：{text}", reason="NO_CAPACITY")
    try:
        async with conn.transaction():
            before = await rewrite_items(conn, [booking], [booking], {snapshot.referral_id: demand}, solution,
                                         horizon)
    except (PlaceGone, asyncpg.UniqueViolationError) as exc:
        raise FailedPrecondition("号源刚被占用，请重试改约", reason="CONFLICT") from exc
    await conn.execute("UPDATE referrals SET snapshot = $2, updated_at = now() WHERE referral_id = $1",
                       snapshot.referral_id, snapshot.SerializeToString())
    await add_rescheduled(conn, booking, before[booking["booking_id"]], reason or "按患者要求改约", request_id)
    await hold_today_beds(conn, booking, horizon)


BED_UNAVAILABLE = "BED_UNAVAILABLE"
_BED_GONE = "原定床位因病区床位变动无法按期空出"
_MOVED = f"{_BED_GONE}，已为您调整住院安排"


async def displace(conn, sched: Scheduler, displaced: list) -> set[str]:
    """Live bookings whose bed will not be free on their nights (the ward recorded a longer
    stay, a blocked bed): each moved to the best places now as a reschedule moves it,
    patient and clinic told by BookingRescheduled; one that nothing fits is cancelled as
    any cancellation is (BookingCancelled) and its referral waitlisted with the reason
    (ReferralWaitlisted), for re-optimisation to place when a bed frees. Returns the ids
    of the bookings moved.

    One engine run places them all: the bed manager's call holds the hospital's lock, and
    a run per booking (each loading the hospital's whole capacity) made it last as long as
    the bookings were many; placed together, one booking's first choice cannot take the
    only place another had."""
    if not displaced:
        return set()
    hospital_id = displaced[0]["hospital_id"]
    now = sched.clock()
    await repo.lock_hospital(conn, hospital_id)
    horizon = sched.horizon(now)
    capacity = await ea.load_capacity(conn, hospital_id, horizon, now, [b["booking_id"] for b in displaced])
    demands: dict[str, ea.Demand] = {}
    for b in displaced:
        referral = await repo.get_referral(conn, b["referral_id"], for_update=True)
        demands[b["referral_id"]] = ea.referral_demand(
            rtypes.ReferralSnapshot.FromString(referral["snapshot"]), referral["accepted_at"], horizon,
            capacity.prep_days, rules=capacity.exam_rules)
    solution = await sched.solve(ea.problem(horizon, capacity, list(demands.values())), "displace")
    placed = solution.placed_referral_ids()
    moved = [b for b in displaced if b["referral_id"] in placed]
    try:
        async with conn.transaction():  # a savepoint: a lost race leaves every booking as it was
            previous = await rewrite_items(conn, displaced, moved, demands, solution, horizon)
    except (PlaceGone, asyncpg.UniqueViolationError) as exc:
        # A writer slipped past the lock: each booking on its own, on fresh state.
        log.info("joint displacement lost a race; displacing one by one", hospital_id=hospital_id, error=str(exc))
        return {b["booking_id"] for b in displaced if await displace_one(conn, sched, b)}
    for b in displaced:
        if b["referral_id"] in placed:
            await add_rescheduled(conn, b, previous[b["booking_id"]], _MOVED)
            await hold_today_beds(conn, b, horizon)
        else:
            await _cancel_displaced(conn, b)
    return {b["booking_id"] for b in moved}


async def displace_one(conn, sched: Scheduler, booking) -> bool:
    """One displaced booking on its own engine run (True when moved): what `displace` falls
    back to, and the baseline its benchmark compares with (benchmarks/scheduler/bedboard.py)."""
    try:
        async with conn.transaction():  # a savepoint: a move that fails leaves the booking as it was
            await reschedule(conn, sched, booking, [], _MOVED)
        return True
    except FailedPrecondition:
        pass
    await _cancel_displaced(conn, booking)
    return False


async def _cancel_displaced(conn, booking) -> None:
    await cancel(conn, booking, f"{_BED_GONE}，且暂无其他合适床位，预约已取消并转入候补，有床位时将重新安排")
    referral = await repo.get_referral(conn, booking["referral_id"], for_update=True)
    await waitlist(conn, rtypes.ReferralSnapshot.FromString(referral["snapshot"]), BED_UNAVAILABLE,
                   f"{_BED_GONE}，暂无其他合适床位{WAITLIST_NOTE}", "", True)


def to_date(d) -> date:
    return date(d.year, d.month, d.day)
