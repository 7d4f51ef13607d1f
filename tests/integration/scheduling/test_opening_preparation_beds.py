"""Early opening of reserved slots, exam preparation and contraindications, and reserved
bed-nights released at their deadline (service layer with an injected `now`)."""
import asyncio
from datetime import date

from common.v1 import types_pb2
from referral.v1 import types_pb2 as rtypes
from scheduling.v1 import events_pb2, scheduling_service_pb2 as pb
from services.common.auth import Role
from services.scheduling.adapters import repository as repo
from services.scheduling.domain import calendar
from services.scheduling.service_layer import allocation, jobs, queries, rendering
from services.scheduling.service_layer.allocation import Scheduler, allocate
from services.scheduling.settings import SchedulerSettings

from .conftest import admission, consultation, exam, pdate, referral, session, timedelta, today

SCHED = Scheduler(SchedulerSettings(time_limit_seconds=2.0))


async def _two_reserved_beds(stub, hospital, metadata):
    await stub.UpsertBeds(pb.UpsertBedsRequest(hospital_id=hospital, wards=[pb.Ward(
        ward_id=f"{hospital}-W1", department="cardiology", name="心内科一病区", rooms=[pb.WardRoom(
            room_id=f"{hospital}-R1", capacity=2, gender_policy=pb.GENDER_POLICY_ANY,
            beds=[pb.BedSpec(bed_id=f"{hospital}-B1"), pb.BedSpec(bed_id=f"{hospital}-B2")])])]), metadata=metadata)


def _day(item):
    return item.start_time.ToDatetime(tzinfo=calendar.LOCAL).date()


async def _allocate(app, snap, now):
    async with app.ctx.pool.acquire() as conn, conn.transaction():
        return await allocate(conn, SCHED, snap, now=now)


async def test_reserved_slots_open_to_clinics_early_release_days_ahead(stack, app, stub, hospital):
    desk = stack.metadata(hospital, Role.REFERRAL_DESK)
    await stub.SetReservationPolicy(pb.SetReservationPolicyRequest(policy=pb.ReservationPolicy(
        hospital_id=hospital, resource_type=pb.RESOURCE_TYPE_OUTPATIENT, reserved_share=0.3, release_hours=1,
        early_release_days=3)), metadata=desk)
    near, far = today() + timedelta(days=2), today() + timedelta(days=6)
    await stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[
        session(f"{hospital}-S1", near, total=10, reserved=3, start="08:00", end="09:00"),
        session(f"{hospital}-S2", far, total=10, reserved=3, start="08:00", end="09:00")]), metadata=desk)
    listed = await stub.ListAvailability(pb.ListAvailabilityRequest(
        hospital_id=hospital, resource_type=pb.RESOURCE_TYPE_OUTPATIENT, to_date=pdate(far)), metadata=desk)
    # Open today: days up to today + 3 only; the far session is not listed yet.
    assert {_day(s) for s in listed.slots} == {near}
    assert sum(s.free_places for s in listed.slots) == 3
    snap = referral(hospital, dates=[far])
    now = calendar.at(today(), 10 * 60)
    waiting = await _allocate(app, snap, now)
    assert waiting.waitlisted
    # Three days later the far session is open to clinics: listed and bookable.
    later = now + timedelta(days=3)
    async with app.ctx.pool.acquire() as conn:
        opened = await queries.availability(conn, hospital, "outpatient", "", "", today(), far, later)
    assert sum(s.free_places for s in opened.slots if _day(s) == far) == 3
    booked = await _allocate(app, snap, later)
    assert not booked.waitlisted


async def _channels(stub, stack, hospital, days):
    await stub.PublishExamCapacity(pb.PublishExamCapacityRequest(
        hospital_id=hospital, hospital_name="示范县人民医院",
        channels=[pb.ExamChannel(channel_id=f"{hospital}-CT1", modality="CT", slot_minutes=15, fasting_hours=4,
                                 contrast_agent=True, kidney_function_valid_days=30, contraindications=["碘造影剂过敏"],
                                 place=events_pb2.Place(building="医技楼", room="CT室1")),
                  pb.ExamChannel(channel_id=f"{hospital}-MRI1", modality="MRI", slot_minutes=30,
                                 contraindications=["心脏起搏器"], place=events_pb2.Place(room="磁共振室"))],
        capacity=[pb.ExamDayCapacity(channel_id=f"{hospital}-{c}", date=pdate(d), start_time="08:00", end_time="10:00",
                                     reserved_places=4) for c in ("CT1", "MRI1") for d in days]),
        metadata=stack.metadata(hospital, Role.REFERRAL_DESK))


async def test_contrast_ct_without_kidney_result_gets_a_preparation_day_and_instruction(stack, app, stub, hospital):
    await _channels(stub, stack, hospital, [today(), today() + timedelta(days=1)])
    service = stack.metadata("scheduler", Role.SERVICE)
    now = calendar.at(today(), 30)  # 00:30: today's 08:00 slots are still ahead
    bare = await _allocate(app, referral(hospital, exam("CT")), now)
    async with app.ctx.pool.acquire() as conn:
        ct, = await rendering.items_of(conn, bare.booking_id)
    assert _day(ct) == today() + timedelta(days=1)  # a day for the creatinine test first
    assert "检查前4小时禁食" in ct.preparation and "未收到有效的肾功能" in ct.preparation
    # A recognised creatinine result travels with the referral: today's slot, no extra instruction.
    ok = referral(hospital, exam("CT"), rtypes.ResourceNeed(
        need_id="n-cr", exam=rtypes.ExamNeed(modality="CREATININE"), covered_by_prior_result=True,
        covering_result_reference="LIS-2026-001"))
    met = await _allocate(app, ok, now)
    async with app.ctx.pool.acquire() as conn:
        ct, = await rendering.items_of(conn, met.booking_id)
    assert "未收到" not in ct.preparation and _day(ct) == today()
    # Capacity only today and no kidney result: the preparation cannot fit before it.
    only_today = referral(hospital, exam("CT"), dates=[today()])
    unmet = await _allocate(app, only_today, now)
    assert unmet.waitlisted and unmet.reason_code == "PREPARATION_UNMET" and "肾功能" in unmet.reason
    routine_deadline = calendar.zh_date(today() + timedelta(days=14))
    assert f"截止日（{routine_deadline}）前" in unmet.reason and unmet.reason.endswith(allocation.WAITLIST_NOTE)
    # Pacemaker (ICD-10 Z95.0) and MRI: not booked, waitlisted with the reason in Chinese.
    paced = referral(hospital, consultation(), exam("MRI", need_id="n-mri"))
    paced.diagnosis_code = "Z95.0"
    result = await stub.AllocateReferral(pb.AllocateReferralRequest(referral=paced), metadata=service)
    assert result.waitlisted and result.reason_code == "CONTRAINDICATED" and "起搏器" in result.reason


async def test_reserved_bed_nights_are_released_at_the_deadline(stack, app, stub, events, hospital):
    desk, beds_md = stack.metadata(hospital, Role.REFERRAL_DESK), stack.metadata(hospital, Role.BED_MANAGER)
    await stub.SetReservationPolicy(pb.SetReservationPolicyRequest(policy=pb.ReservationPolicy(
        hospital_id=hospital, resource_type=pb.RESOURCE_TYPE_BED, reserved_share=0.3, release_hours=24)),
        metadata=desk)
    await _two_reserved_beds(stub, hospital, beds_md)
    d2 = today() + timedelta(days=2)
    first = await _allocate(app, referral(hospital, admission(nights=2), dates=[d2]), calendar.at(today(), 10 * 60))
    assert not first.waitlisted
    # 24 h before night d2 (09:00): tomorrow's and d2's unbooked reserved nights are due.
    now = calendar.at(d2, 9 * 60) - timedelta(hours=24)
    assert await jobs.release_due(app.ctx.pool, now - timedelta(hours=1), hospital) == 2  # tomorrow, both beds
    assert await jobs.release_due(app.ctx.pool, now, hospital) == 1  # d2: the bed not booked
    assert await jobs.release_due(app.ctx.pool, now, hospital) == 0  # once only
    released = await events.wait("CapacityReleased", count=3, resource_type="bed")
    for _ in range(50):
        if sum(e.places for e in released) == 3:
            break
        await asyncio.sleep(0.1)
        released = events.of("CapacityReleased", resource_type="bed")
    assert sum(e.places for e in released) == 3 and released[0].department == "cardiology"
    nights = sorted(date(n.year, n.month, n.day) for e in released for n in e.nights)
    assert nights == [today() + timedelta(days=1)] * 2 + [d2]
    util = await stub.GetUtilization(pb.GetUtilizationRequest(hospital_id=hospital, from_date=pdate(today()),
                                                              to_date=pdate(d2)), metadata=desk)
    bed_pool = next(p for p in util.pools if p.resource_type == pb.RESOURCE_TYPE_BED and p.pool == "reserved")
    assert (bed_pool.places, bed_pool.booked, bed_pool.released, bed_pool.open) == (6, 1, 3, 2)  # tonight's two
    # Released nights are neither listed nor offered to the engine.
    async with app.ctx.pool.acquire() as conn:
        listed = await queries.availability(conn, hospital, "bed", "", "", d2, d2 + timedelta(days=1), now)
    free = {(b.night.month, b.night.day): b.free_beds for b in listed.beds}
    assert (d2.month, d2.day) not in free and free[((d2 + timedelta(days=1)).month, (d2 + timedelta(days=1)).day)] == 1
    late = await _allocate(app, referral(hospital, admission(nights=1), dates=[d2]), now)
    assert late.waitlisted


async def test_without_a_policy_an_urgent_admission_accepted_in_the_evening_finds_a_reserved_bed_or_a_reason(
        stack, app, stub, hospital):
    await _two_reserved_beds(stub, hospital, stack.metadata(hospital, Role.BED_MANAGER))
    evening = calendar.at(today(), 20 * 60)
    # The default deadline (24 h) has released tonight's and tomorrow night's idle reserved
    # beds by now; 48 h would have released the day after's too, the urgent window's last.
    assert await jobs.release_due(app.ctx.pool, evening, hospital) == 4
    urgent = referral(hospital, admission(nights=2), urgency=types_pb2.URGENCY_URGENT)
    booked = await _allocate(app, urgent, evening)
    assert not booked.waitlisted, booked.reason
    async with app.ctx.pool.acquire() as conn:
        night, = await rendering.items_of(conn, booked.booking_id)
    assert _day(night) == today() + timedelta(days=2)
    second = await _allocate(app, referral(hospital, admission(nights=2), urgency=types_pb2.URGENCY_URGENT), evening)
    assert not second.waitlisted
    # Both beds are taken from the window's last night; tomorrow night's went back to the
    # general pool, and the reason says so (the desk can admit from there).
    third = await _allocate(app, referral(hospital, admission(nights=2), urgency=types_pb2.URGENCY_URGENT), evening)
    assert third.waitlisted and third.reason_code == "NO_BED_NIGHTS_BEFORE_DEADLINE"
    assert third.reason.endswith(allocation.RELEASED_BEDS_NOTE + allocation.WAITLIST_NOTE)
    # A patient who can come only on the window's last day: nothing of that night was
    # released, so the plain reason.
    last_day_only = referral(hospital, admission(nights=2), urgency=types_pb2.URGENCY_URGENT,
                             dates=[today() + timedelta(days=2)])
    plain = await _allocate(app, last_day_only, evening)
    assert plain.reason_code == "NO_BED_NIGHTS_BEFORE_DEADLINE" and allocation.RELEASED_BEDS_NOTE not in plain.reason


async def test_an_emergency_accepted_after_the_last_session_is_booked_at_once_into_the_next_morning(
        stack, app, stub, hospital):
    """Today has no slot left to start: its window (today) counts from tomorrow, so the
    patient is told tonight, not after midnight."""
    desk = stack.metadata(hospital, Role.REFERRAL_DESK)
    tomorrow = today() + timedelta(days=1)
    await stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[
        session(f"{hospital}-S1", today(), total=10, reserved=3, start="08:00", end="09:00"),
        session(f"{hospital}-S2", tomorrow, total=10, reserved=3, start="08:00", end="09:00")]), metadata=desk)
    snap = referral(hospital, urgency=types_pb2.URGENCY_EMERGENCY)
    booked = await _allocate(app, snap, calendar.at(today(), 19 * 60))
    assert not booked.waitlisted, booked.reason
    async with app.ctx.pool.acquire() as conn:
        consult, = await rendering.items_of(conn, booked.booking_id)
    assert _day(consult) == tomorrow


async def test_an_emergency_left_waiting_by_a_full_day_is_told_its_deadline_and_booked_the_next_day(
        stack, app, stub, hospital):
    """Today still has a slot to start but it is taken: the emergency waits, the reason names
    the deadline by its date and the department by its published name and says what happens
    next, and once the window has closed the first re-optimisation books it into the next day."""
    desk = stack.metadata(hospital, Role.REFERRAL_DESK)
    tomorrow = today() + timedelta(days=1)
    afternoon = session(f"{hospital}-S1", today(), total=3, reserved=1, start="15:00", end="16:00", slot=60)
    afternoon.department_name = "心内科"
    await stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[
        afternoon, session(f"{hospital}-S2", tomorrow, total=10, reserved=3, start="08:00", end="09:00")]),
        metadata=desk)
    noon = calendar.at(today(), 12 * 60)
    first = await _allocate(app, referral(hospital, urgency=types_pb2.URGENCY_EMERGENCY), noon)
    assert not first.waitlisted, first.reason
    snap = referral(hospital, urgency=types_pb2.URGENCY_EMERGENCY)
    waiting = await _allocate(app, snap, noon)
    assert waiting.waitlisted and waiting.reason_code == "NO_CONSULTATION_SLOT_BEFORE_DEADLINE"
    assert f"截止日（{calendar.zh_date(today())}）前，在患者可就诊的日期内没有心内科可用的门诊号源" in waiting.reason, \
        waiting.reason
    assert waiting.reason.endswith(allocation.WAITLIST_NOTE)
    async with app.ctx.pool.acquire() as conn, conn.transaction():
        assert await allocation.reoptimise(conn, SCHED, hospital, now=noon + timedelta(hours=1)) == []
        assert await allocation.reoptimise(conn, SCHED, hospital, now=calendar.at(tomorrow, 30)) == [
            snap.referral_id]
    async with app.ctx.pool.acquire() as conn:
        booking = await repo.live_booking_of(conn, snap.referral_id)
        consult, = await rendering.items_of(conn, booking["booking_id"])
    assert _day(consult) == tomorrow


async def test_a_waitlist_reason_names_the_modality_in_chinese(stack, app, stub, hospital):
    waiting = await _allocate(app, referral(hospital, exam("ENDOSCOPY", need_id="n-endo")),
                              calendar.at(today(), 8 * 60))
    assert waiting.reason_code == "NO_EXAM_SLOT_BEFORE_DEADLINE" and "没有可用的胃肠镜检查号源" in waiting.reason, \
        waiting.reason
