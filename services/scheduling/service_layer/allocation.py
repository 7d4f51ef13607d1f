"""Placing referrals: at once on acceptance (existing bookings stay), and by the periodic
re-optimisation that promotes the waitlist and may move bookings not yet sent.

Each run takes the hospital's advisory lock, so the engine sees a consistent state;
the unique keys on slot places and bed-nights still decide if any writer slips past it,
and the loser runs the engine again on fresh state (or waitlists).
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
from prometheus_client import Counter, Histogram

from referral.v1 import types_pb2 as rtypes
from scheduling.v1 import events_pb2
from services.common import outbox
from services.common.errors import AlreadyExists
from services.common.logging import get_logger
from services.scheduling import engine
from services.scheduling.adapters import repository as repo
from services.scheduling.domain import calendar, exam_rules, preparation
from services.scheduling.service_layer import engine_adapter as ea
from services.scheduling.service_layer import rendering
from services.scheduling.settings import SchedulerSettings

log = get_logger(__name__)

SOLVES = Histogram("scheduling_solve_seconds", "Allocation engine runs, by what asked for one "
                   "(allocate, reoptimise, reschedule, displace: the bookings a bed board change moves) "
                   "and whether the answer was proven optimal (OPTIMAL, or FEASIBLE when the time limit "
                   "came first).",
                   ("kind", "status"), buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0))
OUTCOMES = Counter("scheduling_allocations_total", "Referrals booked (at acceptance or from the waitlist) or put "
                   "on the waitlist (by reason code).", ("outcome",))


class PlaceGone(Exception):
    """The place the engine chose was taken between loading and writing."""


@dataclass
class Scheduler:
    """What every use case of this service needs besides a connection."""
    settings: SchedulerSettings = field(default_factory=SchedulerSettings)
    clock: Callable[[], datetime] = lambda: datetime.now(calendar.LOCAL)
    # Called after a change that may free capacity (cancellation, discharge, ...).
    on_capacity_freed: Callable[[str], None] = lambda hospital_id: None

    def horizon(self, now: datetime) -> ea.Horizon:
        return ea.Horizon(calendar.local_date(now), self.settings.horizon_days)

    async def solve(self, problem: engine.Problem, kind: str) -> engine.Solution:
        started = time.monotonic()
        # CP-SAT releases the GIL; a thread keeps the event loop (gRPC, consumers) alive.
        solution = await asyncio.to_thread(ea.solve, problem, self.settings.time_limit_seconds,
                                           self.settings.workers)
        SOLVES.labels(kind, solution.status.value).observe(time.monotonic() - started)
        return solution


@dataclass
class Outcome:
    referral_id: str
    booking_id: str = ""
    reason_code: str = ""
    reason: str = ""

    @property
    def waitlisted(self) -> bool:
        return not self.booking_id


async def _quotas(conn, hospital_id: str) -> dict[str, int]:
    raw = await conn.fetchval("SELECT clinic_quotas FROM reservation_policies WHERE hospital_id = $1 "
                              "AND resource_type = 'outpatient'", hospital_id)
    if not raw:
        return {}
    return {k: int(v) for k, v in (json.loads(raw) if isinstance(raw, str) else raw).items()}


QUOTA_EXHAUSTED = ("QUOTA_EXHAUSTED", "本机构在该医院的转诊预约名额已用完，已进入候补队列；急诊、加急及绿色通道转诊不受此限")


def quota_bound(snapshot: rtypes.ReferralSnapshot) -> bool:
    """Whether a hard clinic quota applies: routine referrals outside the green channel."""
    return not snapshot.green_channel and snapshot.urgency not in ea._URGENCY


async def quota_left(conn, hospital_id: str) -> dict[str, int] | None:
    """Places left per clinic under a hard quota policy (None: quotas are soft). A clinic
    uses a place per live booking (TENTATIVE or CONFIRMED) at the hospital."""
    hard = await conn.fetchval("SELECT quotas_hard FROM reservation_policies WHERE hospital_id = $1 "
                               "AND resource_type = 'outpatient'", hospital_id)
    if not hard:
        return None
    quotas = await _quotas(conn, hospital_id)
    rows = await conn.fetch("SELECT sending_institution_id AS clinic, count(*) AS n FROM bookings "
                            "WHERE hospital_id = $1 AND state IN ('TENTATIVE', 'CONFIRMED') GROUP BY 1", hospital_id)
    used = {r["clinic"]: r["n"] for r in rows}
    return {c: q - used.get(c, 0) for c, q in quotas.items()}


async def write_items(conn, booking_id: str, demand: ea.Demand, assignments, horizon: ea.Horizon) -> None:
    for a in assignments:
        need_id = demand.need_of_item.get(a.item_id, a.item_id)
        item_id = f"{booking_id}:{a.item_id}"
        if a.kind == engine.ItemKind.ADMISSION:
            await repo.insert_bed_item(conn, item_id=item_id, booking_id=booking_id, need_id=need_id,
                                       bed_id=a.resource_id, nights=[horizon.date(n) for n in a.nights],
                                       gender=demand.gender)
            continue
        place = await repo.free_place(conn, a.resource_id, a.pool.value.lower())
        if place is None:
            raise PlaceGone(a.resource_id)
        await repo.insert_slot_item(conn, item_id=item_id, booking_id=booking_id, need_id=need_id,
                                    engine_item_id=a.item_id, kind=a.kind.value, slot_id=a.resource_id,
                                    place_no=place, instruction=demand.verdict.instruction(need_id))


async def hold_today_beds(conn, booking, horizon: ea.Horizon) -> None:
    """An admission that starts today gets its bed held on the board and the patient told:
    whether just booked or moved there (a reschedule, a displacement, a re-optimisation),
    or a walk-in could be given the bed before the referred patient arrives. The bed
    held before a move is released by the mover (release_held_bed), as cancel releases it."""
    rows = await conn.fetch("SELECT bi.bed_id, bi.first_night FROM booking_items bi WHERE bi.booking_id = $1 "
                            "AND bi.kind = 'ADMISSION' AND bi.first_night = $2", booking["booking_id"], horizon.today)
    for r in rows:
        held = await conn.fetchval("UPDATE beds SET status = 'HELD', held_booking_id = $2, updated_at = now() "
                                   "WHERE bed_id = $1 AND status = 'FREE' RETURNING true", r["bed_id"],
                                   booking["booking_id"])
        if held:
            await add_bed_ready(conn, booking, r["bed_id"])


async def add_bed_ready(conn, booking, bed_id: str) -> None:
    row = await conn.fetchrow("""
        SELECT b.label, r.label AS room_label, w.name AS ward_name, w.building, w.floor, h.name AS hospital_name,
               bi.first_night
          FROM beds b JOIN rooms r USING (room_id) JOIN wards w USING (ward_id)
          LEFT JOIN hospitals h ON h.hospital_id = b.hospital_id
          LEFT JOIN booking_items bi ON bi.bed_id = b.bed_id AND bi.booking_id = $2
         WHERE b.bed_id = $1""", bed_id, booking["booking_id"])
    first = row["first_night"] or calendar.local_date(datetime.now(calendar.LOCAL))
    event = events_pb2.BedReady(
        referral_id=booking["referral_id"], booking_id=booking["booking_id"], hospital_id=booking["hospital_id"],
        sending_institution_id=booking["sending_institution_id"], ward=row["ward_name"], room=row["room_label"],
        bed=row["label"], admit_by_time=rendering.ts(calendar.at(first, rendering.ADMIT_BY_MINUTE)),
        place=events_pb2.Place(hospital_name=row["hospital_name"] or "", building=row["building"],
                               floor=row["floor"], room=row["room_label"]))
    await outbox.add(conn, event, aggregate_id=booking["booking_id"], hospital_id=booking["hospital_id"])


async def _book(conn, snapshot: rtypes.ReferralSnapshot, demand: ea.Demand, solution: engine.Solution,
                horizon: ea.Horizon, request_id: str) -> str:
    booking_id = uuid.uuid4().hex
    await repo.insert_booking(conn, booking_id=booking_id, referral_id=snapshot.referral_id,
                              hospital_id=snapshot.hospital_id,
                              sending_institution_id=snapshot.sending_institution_id)
    assignments = solution.items_of(snapshot.referral_id).values()
    await write_items(conn, booking_id, demand, assignments, horizon)
    await repo.set_referral_state(conn, snapshot.referral_id, "SCHEDULED")
    booking = await repo.get_booking(conn, booking_id)
    event = await _scheduled_event(conn, booking)
    env = await outbox.add(conn, event, aggregate_id=snapshot.referral_id, hospital_id=snapshot.hospital_id,
                           request_id=request_id)
    await repo.set_scheduled_event(conn, booking_id, env.event_id)
    await hold_today_beds(conn, booking, horizon)
    OUTCOMES.labels("BOOKED").inc()
    return booking_id


async def _scheduled_event(conn, booking) -> events_pb2.ReferralScheduled:
    items = await rendering.items_of(conn, booking["booking_id"])
    # Nothing to book (every need covered by a recognised prior result): the referral is
    # placed all the same, with an empty booking and a note saying why.
    nothing = not items
    return events_pb2.ReferralScheduled(
        referral_id=booking["referral_id"], booking_id=booking["booking_id"], hospital_id=booking["hospital_id"],
        sending_institution_id=booking["sending_institution_id"], items=items, trips=rendering.trips(items),
        bring=preparation.BRING, nothing_to_book=nothing, note=NOTHING_TO_BOOK if nothing else "")


async def waitlist(conn, snapshot: rtypes.ReferralSnapshot, code: str, reason: str, request_id: str,
                   announce: bool) -> None:
    await repo.set_referral_state(conn, snapshot.referral_id, "WAITLISTED", code, reason)
    if announce:
        OUTCOMES.labels(code).inc()
        await outbox.add(conn, events_pb2.ReferralWaitlisted(
            referral_id=snapshot.referral_id, hospital_id=snapshot.hospital_id,
            sending_institution_id=snapshot.sending_institution_id, reason_code=code, reason=reason),
            aggregate_id=snapshot.referral_id, hospital_id=snapshot.hospital_id, request_id=request_id)


# Engine reasons that a preparation day can cause (the exam had to move later).
_DEADLINE_REASONS = (engine.ReasonCode.NO_EXAM_SLOT_BEFORE_DEADLINE, engine.ReasonCode.ORDER_INFEASIBLE,
                     engine.ReasonCode.NO_PATIENT_DAY_BEFORE_DEADLINE)

# Reasons "no slot of this kind before the deadline", by the kind of slot.
_SLOT_REASONS = {engine.ReasonCode.NO_CONSULTATION_SLOT_BEFORE_DEADLINE: "outpatient",
                 engine.ReasonCode.NO_EXAM_SLOT_BEFORE_DEADLINE: "exam"}
RELEASED_NOTE = "；这些日期的预留号源已过释放时限、退回普通号池，可请医院从普通号源加号"
RELEASED_BEDS_NOTE = "；这些日期的预留床位已过释放时限、退回普通床位，可请医院从普通床位安排入院"
# What the clinic can expect next: re-optimisation keeps trying, also past the deadline
# (engine.deadline_day).
WAITLIST_NOTE = "；已进入候补队列，有号源空出时自动安排，过了截止日仍会继续安排。"


async def _released_in_window(conn, hospital_id: str, problem: engine.Problem, referral: engine.Referral,
                              why: engine.UnplacedReferral, horizon: ea.Horizon, now: datetime) -> str:
    """The note to add when the reserved capacity the referral needed inside its window was
    there but had gone back to the general pool ("" when not): the desk can then still book
    from that pool, and a release deadline too long for an urgency shows up here first."""
    last = engine.deadline_day(problem, referral)
    days = [horizon.date(d) for d in referral.available_days if referral.accepted_day <= d <= last]
    if why.reason == engine.ReasonCode.NO_BED_NIGHTS_BEFORE_DEADLINE and referral.admission is not None:
        nights = [d for d in days if calendar.at(d, rendering.ADMIT_MINUTE) > now]
        released = bool(nights) and await repo.released_reserved_nights(
            conn, hospital_id, referral.admission.department, nights)
        return RELEASED_BEDS_NOTE if released else ""
    kind = _SLOT_REASONS.get(why.reason)
    if kind is None:
        return ""
    what = next((c.department for c in referral.all_consultations() if c.item_id == why.item_id), None) \
        or next((e.modality for e in referral.exams if e.item_id == why.item_id), None)
    released = bool(what and days) and await repo.released_reserved_places(conn, hospital_id, kind, what, days, now)
    return RELEASED_NOTE if released else ""


NOTHING_TO_BOOK = "所需检查均有互认的既往结果，无需另行预约；请携带既往检查结果前来就诊或等待医院联系"
NO_CAPACITY = ("CAPACITY_TAKEN", "号源已被其他转诊占用，已进入候补队列")


async def allocate(conn: asyncpg.Connection, sched: Scheduler, snapshot: rtypes.ReferralSnapshot, *,
                   request_id: str = "", now: datetime | None = None,
                   accepted_at: datetime | None = None) -> Outcome:
    """Place one accepted referral now, inside the caller's transaction (an RPC's or an
    event handler's inbox transaction); a conflicting writer costs a retry, not an error.
    `accepted_at`: when the hospital accepted it (the event's time), from which its urgency's
    window counts; an acceptance that reaches the scheduler late must not get a later
    deadline. Never later than `now` (another host's clock)."""
    now = now or sched.clock()
    accepted_at = min(accepted_at or now, now)
    rid = snapshot.referral_id
    await repo.lock_hospital(conn, snapshot.hospital_id)
    known = await repo.get_referral(conn, rid, for_update=True)
    if known is not None and known["hospital_id"] != snapshot.hospital_id:
        # Another hospital's referral: neither its booking nor its snapshot is this caller's.
        raise AlreadyExists("该转诊单编号已属于其他医院", reason="REFERRAL_OF_ANOTHER_HOSPITAL")
    live = await repo.live_booking_of(conn, rid)
    if live is not None:
        return Outcome(rid, booking_id=live["booking_id"])  # the same acceptance again
    accepted_at = known["accepted_at"] if known is not None and known["state"] == "WAITLISTED" else accepted_at
    first_time = known is None or known["state"] != "WAITLISTED"
    await repo.save_referral(conn, referral_id=rid, hospital_id=snapshot.hospital_id,
                             sending_institution_id=snapshot.sending_institution_id,
                             snapshot=snapshot.SerializeToString(), accepted_at=accepted_at, state="WAITLISTED")
    horizon = sched.horizon(now)
    left = await quota_left(conn, snapshot.hospital_id)
    if left is not None and quota_bound(snapshot) and left.get(snapshot.sending_institution_id, 1) <= 0:
        await waitlist(conn, snapshot, *QUOTA_EXHAUSTED, request_id, first_time)
        return Outcome(rid, reason_code=QUOTA_EXHAUSTED[0], reason=QUOTA_EXHAUSTED[1])
    for attempt in range(sched.settings.conflict_retries):
        capacity = await ea.load_capacity(conn, snapshot.hospital_id, horizon, now, [])
        demand = ea.referral_demand(snapshot, accepted_at, horizon, capacity.prep_days, rules=capacity.exam_rules)
        if demand.contraindicated:
            text = demand.verdict.contraindication_text()
            await waitlist(conn, snapshot, exam_rules.CONTRAINDICATED, text, request_id, first_time)
            return Outcome(rid, reason_code=exam_rules.CONTRAINDICATED, reason=text)
        problem = ea.problem(horizon, capacity, [demand], quotas=await _quotas(conn, snapshot.hospital_id))
        solution = await sched.solve(problem, "allocate")
        if rid not in solution.placed_referral_ids() and rid in solution.unplaced_by_id():
            why = solution.unplaced_by_id()[rid]
            if demand.verdict.unmet and why.reason in _DEADLINE_REASONS:
                code = exam_rules.PREPARATION_UNMET
                text = demand.verdict.unmet_text(calendar.zh_date(horizon.date(why.deadline_day))) + WAITLIST_NOTE
            else:
                code, text = why.reason.value, await ea.reason_text(conn, snapshot.hospital_id, why, horizon)
                note = await _released_in_window(conn, snapshot.hospital_id, problem, demand.referral, why,
                                                 horizon, now)
                text = text.rstrip("。") + note + WAITLIST_NOTE
            await waitlist(conn, snapshot, code, text, request_id, first_time)
            return Outcome(rid, reason_code=code, reason=text)
        try:
            async with conn.transaction():  # a savepoint: a lost race undoes only this attempt
                booking_id = await _book(conn, snapshot, demand, solution, horizon, request_id)
            return Outcome(rid, booking_id=booking_id)
        except (PlaceGone, asyncpg.UniqueViolationError) as exc:
            log.info("allocation lost a race, retrying", referral_id=rid, attempt=attempt + 1, error=str(exc))
    await waitlist(conn, snapshot, *NO_CAPACITY, request_id, first_time)
    return Outcome(rid, reason_code=NO_CAPACITY[0], reason=NO_CAPACITY[1])


def _same_place(old: list[engine.ExistingBooking], new: dict[str, engine.ItemAssignment]) -> bool:
    for b in old:
        a = new.get(b.item_id)
        if a is None or a.resource_id != b.resource_id or (b.start_night is not None and a.day != b.start_night):
            return False
    return len(old) == len(new)


async def reoptimise(conn: asyncpg.Connection, sched: Scheduler, hospital_id: str,
                     now: datetime | None = None) -> list[str]:
    """Promote waitlisted referrals into capacity freed since they were placed on the list,
    moving only tentative bookings. Returns the referral ids promoted."""
    now = now or sched.clock()
    await repo.lock_hospital(conn, hospital_id)
    await repo.confirm_sent(conn, hospital_id)
    horizon = sched.horizon(now)
    waiting = await repo.waitlisted(conn, hospital_id)
    left = await quota_left(conn, hospital_id)
    if left is not None:
        # Under a hard quota, only as many routine referrals of a clinic as it has
        # places left are offered to the engine, oldest first.
        kept = []
        for row in waiting:
            snap = rtypes.ReferralSnapshot.FromString(row["snapshot"])
            clinic = snap.sending_institution_id
            if quota_bound(snap) and clinic in left:
                if left[clinic] <= 0:
                    continue
                left[clinic] -= 1
            kept.append(row)
        waiting = kept
    if not waiting:
        return []
    tentative = await repo.tentative_bookings(conn, hospital_id)
    movable = [b["booking_id"] for b in tentative]
    capacity = await ea.load_capacity(conn, hospital_id, horizon, now, movable)
    snapshots: dict[str, rtypes.ReferralSnapshot] = {}
    demands: dict[str, ea.Demand] = {}
    existing: dict[str, list[engine.ExistingBooking]] = {}
    for row in [*tentative, *waiting]:
        snap = rtypes.ReferralSnapshot.FromString(row["snapshot"])
        snapshots[snap.referral_id] = snap
        demand = ea.referral_demand(snap, row["accepted_at"], horizon, capacity.prep_days, rules=capacity.exam_rules)
        if demand.contraindicated and row["state"] == "WAITLISTED":
            continue  # stays on the list as CONTRAINDICATED until the referral changes
        demands[snap.referral_id] = demand
    for b in tentative:
        existing[b["referral_id"]] = await ea.existing_of(conn, b["booking_id"], b["referral_id"], horizon)
    prob = ea.problem(horizon, capacity, list(demands.values()),
                      tuple(e for es in existing.values() for e in es), await _quotas(conn, hospital_id))
    solution = await sched.solve(prob, "reoptimise")
    placed = solution.placed_referral_ids()
    moved = [b for b in tentative if b["referral_id"] in placed
             and not _same_place(existing[b["referral_id"]], solution.items_of(b["referral_id"]))]
    if moved:
        try:
            async with conn.transaction():  # a savepoint: a lost race undoes the moves only
                await _move(conn, moved, demands, solution, horizon)
        except (PlaceGone, asyncpg.UniqueViolationError) as exc:
            log.info("moves lost a race; the bookings stay where they are", hospital_id=hospital_id, error=str(exc))
            moved = []
    promoted = []
    for row in waiting:
        rid = row["referral_id"]
        if rid not in placed or rid not in demands:
            continue
        try:
            async with conn.transaction():
                await _book(conn, snapshots[rid], demands[rid], solution, horizon, "")
            promoted.append(rid)
        except (PlaceGone, asyncpg.UniqueViolationError):
            log.info("promotion lost its place; stays waitlisted", referral_id=rid)
    if promoted or moved:
        log.info("reoptimised", hospital_id=hospital_id, promoted=len(promoted), moved=len(moved),
                 waiting=len(waiting) - len(promoted), objective=solution.objective)
    return promoted


async def _move(conn, moved, demands, solution, horizon) -> None:
    """Move tentative bookings, whose ReferralScheduled has not been published yet: that
    event is rewritten with the new places, so the patient hears only the final ones. One
    published meanwhile is followed by a BookingRescheduled instead."""
    previous = await rewrite_items(conn, moved, moved, demands, solution, horizon)
    for b in moved:
        rid = b["referral_id"]
        event_id = b["scheduled_event_id"]
        if event_id is None or not await outbox.rewrite_unsent(
                conn, str(event_id), await _scheduled_event(conn, b), aggregate_id=rid, hospital_id=b["hospital_id"]):
            await add_rescheduled(conn, b, previous[b["booking_id"]], "为让候补患者尽早就诊，调整了预约")
        await hold_today_beds(conn, b, horizon)


async def rewrite_items(conn, freed: list, placed: list, demands: dict, solution, horizon) -> dict[str, list]:
    """Gives the `placed` bookings the solution's places, after the places (and held beds) of
    every `freed` booking are given back: the engine saw them all as free, so one booking
    may take another's old place. Returns what each placed booking held before, for its
    BookingRescheduled. PlaceGone or UniqueViolationError when a place went meanwhile: the
    caller's savepoint undoes the lot."""
    previous = {b["booking_id"]: await rendering.items_of(conn, b["booking_id"]) for b in placed}
    for b in freed:
        await release_held_bed(conn, b["booking_id"])
        await repo.delete_items(conn, b["booking_id"])
    for b in placed:
        rid = b["referral_id"]
        await write_items(conn, b["booking_id"], demands[rid], solution.items_of(rid).values(), horizon)
    return previous


async def release_held_bed(conn, booking_id: str) -> None:
    """A bed held on the board for a booking that no longer takes it goes back to FREE."""
    await conn.execute("UPDATE beds SET status = 'FREE', held_booking_id = NULL, updated_at = now() "
                       "WHERE held_booking_id = $1", booking_id)


async def add_rescheduled(conn, booking, previous, reason: str, request_id: str = "") -> None:
    items = await rendering.items_of(conn, booking["booking_id"])
    await outbox.add(conn, events_pb2.BookingRescheduled(
        referral_id=booking["referral_id"], booking_id=booking["booking_id"], hospital_id=booking["hospital_id"],
        sending_institution_id=booking["sending_institution_id"], items=items, previous_items=previous,
        reason=reason), aggregate_id=booking["referral_id"], hospital_id=booking["hospital_id"],
        request_id=request_id)
    await conn.execute("UPDATE bookings SET updated_at = now() WHERE booking_id = $1", booking["booking_id"])
