"""Re-optimisation moves a TENTATIVE booking to make room for the waitlist, never a CONFIRMED one."""
import pytest

from common.v1 import event_pb2
from scheduling.v1 import events_pb2, scheduling_service_pb2 as pb
from services.common.auth import Role
from services.scheduling.adapters import repository as repo
from services.scheduling.domain import calendar
from services.scheduling.service_layer.allocation import Scheduler, reoptimise

from .conftest import referral, session, timedelta, today


async def _one_booked_one_waiting(stack, stub, hospital):
    """One reserved place on day 1 and one on day 2. The flexible patient took day 1; the
    second can come on day 1 only and waits. Moving the first to day 2 places both."""
    day1, day2 = today() + timedelta(days=1), today() + timedelta(days=2)
    desk = stack.metadata(hospital, Role.REFERRAL_DESK)
    await stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[
        session(f"{hospital}-S1", day1, total=3, reserved=1, start="08:00", end="08:30"),
        session(f"{hospital}-S2", day2, total=3, reserved=1, start="08:00", end="08:30")]), metadata=desk)
    service = stack.metadata("scheduler", Role.SERVICE)
    flexible = await stub.AllocateReferral(pb.AllocateReferralRequest(referral=referral(hospital)), metadata=service)
    assert flexible.booking.items[0].start_time.ToDatetime().date() == day1
    fixed_day = referral(hospital, clinic="CLINIC02", dates=[day1])
    assert (await stub.AllocateReferral(pb.AllocateReferralRequest(referral=fixed_day), metadata=service)).waitlisted
    return flexible.booking, fixed_day, day1, day2


@pytest.mark.parametrize("state", ["TENTATIVE", "CONFIRMED"])
async def test_reoptimisation_moves_only_tentative_bookings(stack, app, stub, hospital, state):
    booking, fixed_day, day1, day2 = await _one_booked_one_waiting(stack, stub, hospital)
    booking_id = booking.booking_id
    async with app.ctx.pool.acquire() as conn, conn.transaction():
        # Not yet sent to the patient (TENTATIVE), or sent (CONFIRMED).
        await conn.execute("UPDATE bookings SET state = $2, scheduled_event_id = NULL WHERE booking_id = $1",
                           booking_id, state)
        promoted = await reoptimise(conn, Scheduler(), hospital, now=calendar.at(today(), 600))
        items = await repo.items(conn, booking_id)
    moved_to = calendar.local_date(items[0]["start_at"])
    if state == "TENTATIVE":
        assert promoted == [fixed_day.referral_id] and moved_to == day2
    else:
        assert promoted == [] and moved_to == day1


async def test_a_move_before_the_patient_was_told_rewrites_the_unsent_booking_message(stack, app, stub, hospital):
    """The moved booking's ReferralScheduled is still in the outbox: it goes out with the new
    place, and no BookingRescheduled follows (the patient hears one time, the right one)."""
    booking, fixed_day, _, day2 = await _one_booked_one_waiting(stack, stub, hospital)
    booking_id = booking.booking_id
    async with app.ctx.pool.acquire() as conn, conn.transaction():
        event_id = await conn.fetchval("SELECT scheduled_event_id FROM bookings WHERE booking_id = $1", booking_id)
        # As if the broker had been away since the booking: its event is still unsent.
        await conn.execute("UPDATE bookings SET state = 'TENTATIVE' WHERE booking_id = $1", booking_id)
        await conn.execute("UPDATE outbox SET sent_at = NULL WHERE event_id = $1", event_id)
        promoted = await reoptimise(conn, Scheduler(), hospital, now=calendar.at(today(), 600))
        payload = await conn.fetchval("SELECT payload FROM outbox WHERE event_id = $1", event_id)
        rescheduled = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE event_type LIKE '%BookingRescheduled' AND aggregate_id = $1",
            booking.referral_id)
    assert promoted == [fixed_day.referral_id] and rescheduled == 0
    env = event_pb2.EventEnvelope.FromString(payload)
    scheduled = events_pb2.ReferralScheduled()
    env.payload.Unpack(scheduled)
    assert env.event_id == str(event_id) and scheduled.booking_id == booking_id
    assert [calendar.local_date(i.start_time.ToDatetime(tzinfo=calendar.LOCAL)) for i in scheduled.items] == [day2]


async def test_a_green_channel_referral_on_the_overflow_leaves_the_reserved_place_to_a_routine_one(
        stack, app, stub, hospital):
    """The engine charges the green referral to the overflow place so that the routine one
    fits on the reserved place; the service must book them on those very places."""
    day1 = today() + timedelta(days=1)
    desk = stack.metadata(hospital, Role.REFERRAL_DESK)
    await stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[
        session(f"{hospital}-S1", day1, total=3, reserved=1, overflow=1, start="08:00", end="08:30")]),
        metadata=desk)
    green = referral(hospital, rid=f"G{hospital}", dates=[day1])
    green.green_channel = True
    routine = referral(hospital, rid=f"N{hospital}", clinic="CLINIC02", dates=[day1])
    async with app.ctx.pool.acquire() as conn, conn.transaction():
        for snap in (green, routine):  # both on the list, the green one first
            await repo.save_referral(conn, referral_id=snap.referral_id, hospital_id=hospital,
                                     sending_institution_id=snap.sending_institution_id,
                                     snapshot=snap.SerializeToString(), accepted_at=calendar.at(today(), 480),
                                     state="WAITLISTED")
        promoted = await reoptimise(conn, Scheduler(), hospital, now=calendar.at(today(), 600))
    assert sorted(promoted) == sorted([green.referral_id, routine.referral_id])


async def test_a_referral_waiting_longer_than_the_horizon_is_still_placed(stack, app, stub, hospital):
    """The clinic was told the referral stays on the list until placed."""
    day1 = today() + timedelta(days=1)
    snap = referral(hospital)
    async with app.ctx.pool.acquire() as conn, conn.transaction():
        await repo.save_referral(conn, referral_id=snap.referral_id, hospital_id=hospital,
                                 sending_institution_id=snap.sending_institution_id, snapshot=snap.SerializeToString(),
                                 accepted_at=calendar.at(today() - timedelta(days=40), 600), state="WAITLISTED")
    desk = stack.metadata(hospital, Role.REFERRAL_DESK)
    await stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[
        session(f"{hospital}-S1", day1, total=3, reserved=1, start="08:00", end="08:30")]), metadata=desk)
    async with app.ctx.pool.acquire() as conn, conn.transaction():
        assert await reoptimise(conn, Scheduler(), hospital, now=calendar.at(today(), 600)) == [snap.referral_id]


async def test_one_hospitals_failed_reoptimisation_does_not_stop_the_others(stack, app, stub, hospital, monkeypatch):
    from services.scheduling.entrypoints import app as entry
    snap = referral(hospital)
    async with app.ctx.pool.acquire() as conn, conn.transaction():
        await repo.save_referral(conn, referral_id=snap.referral_id, hospital_id=hospital,
                                 sending_institution_id=snap.sending_institution_id, snapshot=snap.SerializeToString(),
                                 accepted_at=calendar.at(today(), 480), state="WAITLISTED")
    await stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[
        session(f"{hospital}-S1", today() + timedelta(days=1), total=3, reserved=1, start="08:00", end="08:30")]),
        metadata=stack.metadata(hospital, Role.REFERRAL_DESK))
    real = entry.reoptimise

    async def failing_first(conn, sched, hospital_id, now=None):
        if hospital_id == "A-BROKEN":
            raise ValueError("a snapshot this version cannot read")
        return await real(conn, sched, hospital_id, now)
    monkeypatch.setattr(entry, "reoptimise", failing_first)
    reoptimiser = entry.Reoptimiser(app.ctx.pool, Scheduler())
    assert await reoptimiser.run_once({"A-BROKEN", hospital}) == [snap.referral_id]
    assert reoptimiser._woken == {"A-BROKEN"}  # tried again at the next run
