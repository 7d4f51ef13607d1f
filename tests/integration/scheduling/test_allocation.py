"""Allocation on accept, waitlist and promotion, and no overbooking under concurrency."""
import asyncio

import asyncpg
import grpc
import pytest

from common.v1 import types_pb2
from referral.v1 import events_pb2 as revents
from scheduling.v1 import events_pb2, scheduling_service_pb2 as pb
from services.common.auth import Role
from tests.support.metrics import metric

from .conftest import accept, consultation, exam, publish_event, referral, session, timedelta, today


async def _ct_channel(stub, stack, hospital, day, reserved=4):
    await stub.PublishExamCapacity(pb.PublishExamCapacityRequest(
        hospital_id=hospital, hospital_name="示范县人民医院",
        channels=[pb.ExamChannel(channel_id=f"{hospital}-CT1", modality="CT", device_id="CT-64",
                                 place=events_pb2.Place(building="医技楼", floor="1层", room="CT室1"),
                                 slot_minutes=15, fasting_hours=8, contrast_agent=True,
                                 kidney_function_valid_days=30)],
        capacity=[pb.ExamDayCapacity(channel_id=f"{hospital}-CT1", date=_pd(day), start_time="08:00",
                                     end_time="10:00", reserved_places=reserved)]),
        metadata=stack.metadata(hospital, Role.REFERRAL_DESK))


def _pd(d):
    from .conftest import pdate
    return pdate(d)


async def test_accepted_referral_is_scheduled_with_exam_before_consultation(stack, app, stub, events, hospital):
    day = today() + timedelta(days=1)
    desk = stack.metadata(hospital, Role.REFERRAL_DESK)
    await stub.PublishSessions(pb.PublishSessionsRequest(
        hospital_id=hospital, hospital_name="示范县人民医院", sessions=[session(f"{hospital}-S1", day)]), metadata=desk)
    await _ct_channel(stub, stack, hospital, day)
    snap = referral(hospital, consultation(), exam())
    await accept(app, snap)
    scheduled, = await events.wait("ReferralScheduled", referral_id=snap.referral_id)
    assert scheduled.trips == 1 and len(scheduled.items) == 2
    by_kind = {i.kind: i for i in scheduled.items}
    ct, visit = by_kind[events_pb2.ITEM_KIND_EXAM], by_kind[events_pb2.ITEM_KIND_CONSULTATION]
    assert ct.end_time.ToSeconds() <= visit.start_time.ToSeconds()
    assert "检查前8小时禁食" in ct.preparation and "增强CT需携带近30天内肾功能结果" in ct.preparation
    assert ct.place.room == "CT室1" and visit.place.building == "门诊楼"
    assert visit.place.hospital_name == "示范县人民医院" and visit.department == "cardiology"
    # The sending clinic sees the booking; another clinic does not know it exists.
    got = await stub.GetBooking(pb.GetBookingRequest(name=f"bookings/{scheduled.booking_id}"),
                                metadata=stack.metadata("CLINIC01", Role.CLINIC_DOCTOR))
    assert got.referral_id == snap.referral_id and len(got.items) == 2
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetBooking(pb.GetBookingRequest(name=f"bookings/{scheduled.booking_id}"),
                              metadata=stack.metadata("CLINIC02", Role.CLINIC_DOCTOR))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # A redelivered acceptance changes nothing.
    await accept(app, snap)
    await asyncio.sleep(1.0)
    assert len(events.of("ReferralScheduled", referral_id=snap.referral_id)) == 1
    # Once the scheduled event is out, the booking counts as sent to the patient.
    async with app.ctx.pool.acquire() as conn:
        from services.scheduling.adapters import repository as repo
        await repo.confirm_sent(conn, hospital)
    got = await stub.GetBooking(pb.GetBookingRequest(name=f"bookings/{scheduled.booking_id}"),
                                metadata=stack.metadata(hospital, Role.REFERRAL_DESK))
    assert got.state == pb.BOOKING_STATE_CONFIRMED


async def test_waitlisted_referral_is_promoted_after_a_cancellation(stack, app, stub, events, hospital):
    outcomes, solves = "scheduling_allocations_total", "scheduling_solve_seconds_count"
    before = (metric(outcomes, outcome="BOOKED"), metric(outcomes) - metric(outcomes, outcome="BOOKED"),
              metric(solves, kind="allocate"), metric(solves, kind="reoptimise"))
    day = today() + timedelta(days=2)
    desk = stack.metadata(hospital, Role.REFERRAL_DESK)
    await stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[
        session(f"{hospital}-S1", day, total=3, reserved=1, start="08:00", end="08:30")]), metadata=desk)
    first = referral(hospital, clinic="CLINIC01")
    result = await stub.AllocateReferral(pb.AllocateReferralRequest(referral=first),
                                         metadata=stack.metadata("scheduler", Role.SERVICE))
    assert not result.waitlisted and result.booking.items[0].department == "cardiology"
    second = referral(hospital, clinic="CLINIC02")
    await accept(app, second)
    waitlisted, = await events.wait("ReferralWaitlisted", referral_id=second.referral_id)
    assert waitlisted.reason_code and waitlisted.reason
    await stub.CancelBooking(pb.CancelBookingRequest(name=result.booking.name, reason="患者改去他院"), metadata=desk)
    await events.wait("BookingCancelled", referral_id=first.referral_id)
    # The cancellation wakes the re-optimisation, which gives the freed place to the waitlist.
    promoted, = await events.wait("ReferralScheduled", referral_id=second.referral_id)
    assert promoted.items[0].start_time.ToDatetime().date() <= day
    util = await stub.GetUtilization(pb.GetUtilizationRequest(hospital_id=hospital), metadata=desk)
    clinics = {c.clinic_id: c for c in util.clinics}
    assert clinics["CLINIC01"].cancelled == 1 and clinics["CLINIC02"].booked == 1
    # What operations watch: two bookings (at acceptance, then from the waitlist), one
    # referral put on the waitlist, and how long the engine took for each.
    after = (metric(outcomes, outcome="BOOKED"), metric(outcomes) - metric(outcomes, outcome="BOOKED"),
             metric(solves, kind="allocate"), metric(solves, kind="reoptimise"))
    assert after[0] - before[0] == 2 and after[1] - before[1] == 1
    assert metric(outcomes, outcome=waitlisted.reason_code) >= 1
    assert after[2] - before[2] == 2 and after[3] - before[3] >= 1
    # The referral service cancelling the referral frees it again.
    await publish_event(app, revents.ReferralCancelled(referral=second, reason="患者撤回同意"), second)
    await events.wait("BookingCancelled", referral_id=second.referral_id)


async def test_concurrent_allocations_never_overbook(stack, app, stub, hospital):
    day = today() + timedelta(days=1)
    desk = stack.metadata(hospital, Role.REFERRAL_DESK)
    await stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[
        session(f"{hospital}-S1", day, total=30, reserved=10, start="08:00", end="10:00")]), metadata=desk)
    service = stack.metadata("scheduler", Role.SERVICE)
    results = await asyncio.gather(*(
        stub.AllocateReferral(pb.AllocateReferralRequest(referral=referral(hospital, clinic=f"CLINIC{i % 12 + 1:02d}")),
                              metadata=service) for i in range(50)))
    assert sum(not r.waitlisted for r in results) == 10
    assert sum(r.waitlisted for r in results) == 40
    async with app.ctx.pool.acquire() as conn:
        held = await conn.fetch("SELECT bi.slot_id, bi.place_no, p.pool FROM booking_items bi "
                                "JOIN slot_places p USING (slot_id, place_no) JOIN slots s USING (slot_id) "
                                "WHERE s.hospital_id = $1", hospital)
        assert len(held) == 10 and len({(r["slot_id"], r["place_no"]) for r in held}) == 10
        assert {r["pool"] for r in held} == {"reserved"}
        # The database itself refuses a second holder of a place, whatever the application does.
        other = await conn.fetchval("SELECT booking_id FROM booking_items bi JOIN slots s USING (slot_id) "
                                    "WHERE s.hospital_id = $1 LIMIT 1", hospital)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO booking_items (item_id, booking_id, need_id, engine_item_id, kind, slot_id, "
                               "place_no) VALUES ('dup', $1, 'n', 'consultation', 'CONSULTATION', $2, $3)",
                               other, held[0]["slot_id"], held[0]["place_no"])


async def test_another_hospitals_desk_cannot_allocate_a_referral_of_this_one(stack, app, stub, hospital):
    day = today() + timedelta(days=1)
    desk = stack.metadata(hospital, Role.REFERRAL_DESK)
    await stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[
        session(f"{hospital}-S1", day)]), metadata=desk)
    snap = referral(hospital)
    booked = await stub.AllocateReferral(pb.AllocateReferralRequest(referral=snap), metadata=desk)
    other = f"{hospital}X"
    foreign = referral(other, rid=snap.referral_id)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.AllocateReferral(pb.AllocateReferralRequest(referral=foreign),
                                    metadata=stack.metadata(other, Role.REFERRAL_DESK))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and "其他医院" in err.value.details()
    got = await stub.GetBooking(pb.GetBookingRequest(name=booked.booking.name), metadata=desk)
    assert got.hospital_id == hospital and got.state in (pb.BOOKING_STATE_TENTATIVE, pb.BOOKING_STATE_CONFIRMED)


async def test_an_acceptance_that_reaches_the_scheduler_late_keeps_its_deadline(stack, app, stub, events, hospital):
    """Accepted two days ago (the scheduler was behind): an urgent referral's two-day window
    counts from then, so its deadline is today, not two days from now."""
    from services.scheduling.domain import calendar
    snap = referral(hospital, urgency=types_pb2.URGENCY_URGENT)
    two_days_ago = calendar.at(today() - timedelta(days=2), 10 * 60)
    await accept(app, snap, occurred=two_days_ago)
    waitlisted, = await events.wait("ReferralWaitlisted", referral_id=snap.referral_id)
    assert f"截止日（{calendar.zh_date(today())}）前" in waitlisted.reason, waitlisted.reason
    async with app.ctx.pool.acquire() as conn:
        accepted_at = await conn.fetchval("SELECT accepted_at FROM referrals WHERE referral_id = $1",
                                          snap.referral_id)
    assert accepted_at == two_days_ago
