"""Re-optimisation moves a TENTATIVE booking to make room for the waitlist, never a CONFIRMED one."""
import pytest

from scheduling.v1 import scheduling_service_pb2 as pb
from services.common.auth import Role
from services.scheduling.adapters import repository as repo
from services.scheduling.domain import calendar
from services.scheduling.service_layer.allocation import Scheduler, reoptimise

from .conftest import referral, session, timedelta, today


@pytest.mark.parametrize("state", ["TENTATIVE", "CONFIRMED"])
async def test_reoptimisation_moves_only_tentative_bookings(stack, app, stub, hospital, state):
    # One reserved place on day 1 and one on day 2. The flexible patient took day 1; the
    # second can come on day 1 only and waits. Moving the first to day 2 places both.
    day1, day2 = today() + timedelta(days=1), today() + timedelta(days=2)
    desk = stack.metadata(hospital, Role.REFERRAL_DESK)
    await stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[
        session(f"{hospital}-S1", day1, total=3, reserved=1, start="08:00", end="08:30"),
        session(f"{hospital}-S2", day2, total=3, reserved=1, start="08:00", end="08:30")]), metadata=desk)
    service = stack.metadata("scheduler", Role.SERVICE)
    flexible = await stub.AllocateReferral(pb.AllocateReferralRequest(referral=referral(hospital)), metadata=service)
    assert flexible.booking.items[0].start_time.ToDatetime().date() == day1
    booking_id = flexible.booking.name.split("/")[-1]
    fixed_day = referral(hospital, clinic="CLINIC02", dates=[day1])
    waiting = await stub.AllocateReferral(pb.AllocateReferralRequest(referral=fixed_day), metadata=service)
    assert waiting.waitlisted
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
