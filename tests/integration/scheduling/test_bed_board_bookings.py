"""The bed board records what happens on the ward; the bookings on a bed that will not be
free follow it (moved, or waitlisted), and a no-show's admission gives back its stay."""
import asyncio

from referral.v1 import events_pb2 as revents
from scheduling.v1 import events_pb2, scheduling_service_pb2 as pb
from services.common.auth import Role
from services.scheduling.domain import calendar

from .conftest import admission, pdate, publish_event, referral, timedelta, today


async def _two_beds(stub, stack, hospital):
    await stub.UpsertBeds(pb.UpsertBedsRequest(hospital_id=hospital, wards=[pb.Ward(
        ward_id=f"{hospital}-W1", department="cardiology", name="心内科一病区",
        place=events_pb2.Place(building="住院楼", floor="5层"), rooms=[pb.WardRoom(
            room_id=f"{hospital}-R1", label="501", capacity=2, gender_policy=pb.GENDER_POLICY_ANY,
            beds=[pb.BedSpec(bed_id=f"{hospital}-B1", label="1床"),
                  pb.BedSpec(bed_id=f"{hospital}-B2", label="2床")])])]),
        metadata=stack.metadata(hospital, Role.BED_MANAGER))


async def _booked_on_b1(stack, stub, hospital, first_night, nights=3):
    """An admission from `first_night` on B1 (B2 blocked meanwhile, B1 occupied until then)."""
    beds = stack.metadata(hospital, Role.BED_MANAGER)
    await _two_beds(stub, stack, hospital)
    await stub.UpdateBedStatus(pb.UpdateBedStatusRequest(bed_id=f"{hospital}-B2", status=pb.BED_STATUS_BLOCKED),
                               metadata=beds)
    await stub.UpdateBedStatus(pb.UpdateBedStatusRequest(bed_id=f"{hospital}-B1", status=pb.BED_STATUS_OCCUPIED,
                                                         expected_discharge_date=pdate(first_night)), metadata=beds)
    snap = referral(hospital, admission(nights=nights), dates=[first_night])
    result = await stub.AllocateReferral(pb.AllocateReferralRequest(referral=snap),
                                         metadata=stack.metadata("scheduler", Role.SERVICE))
    assert not result.waitlisted and result.booking.items[0].bed == "1床"
    return snap, result.booking.booking_id


async def _outbox(app, referral_id: str) -> list[str]:
    rows = await app.ctx.pool.fetch("SELECT event_type FROM outbox WHERE aggregate_id = $1 ORDER BY created_at",
                                    referral_id)
    return [r["event_type"].split(".")[-1] for r in rows]


async def _bed_of(app, booking_id: str) -> list:
    return [r["bed_id"] for r in await app.ctx.pool.fetch(
        "SELECT DISTINCT n.bed_id FROM bed_nights n JOIN booking_items bi USING (item_id) WHERE bi.booking_id = $1",
        booking_id)]


async def test_a_longer_stay_moves_the_admission_booked_after_it_to_another_bed(stack, app, stub, hospital):
    beds = stack.metadata(hospital, Role.BED_MANAGER)
    d = today() + timedelta(days=2)
    snap, booking_id = await _booked_on_b1(stack, stub, hospital, d)
    await stub.UpdateBedStatus(pb.UpdateBedStatusRequest(bed_id=f"{hospital}-B2", status=pb.BED_STATUS_FREE),
                               metadata=beds)
    # The inpatient on B1 stays three nights longer: recorded, and the booking follows.
    state = await stub.SetExpectedDischarge(pb.SetExpectedDischargeRequest(
        bed_id=f"{hospital}-B1", expected_discharge_date=pdate(d + timedelta(days=3))), metadata=beds)
    assert state.booked_nights == 0
    assert await _bed_of(app, booking_id) == [f"{hospital}-B2"]
    assert "BookingRescheduled" in await _outbox(app, snap.referral_id)
    got = await stub.GetBooking(pb.GetBookingRequest(name=f"bookings/{booking_id}"),
                                metadata=stack.metadata(hospital, Role.REFERRAL_DESK))
    assert got.state in (pb.BOOKING_STATE_TENTATIVE, pb.BOOKING_STATE_CONFIRMED) and got.items[0].bed == "2床"
    assert got.items[0].start_time.ToDatetime(tzinfo=calendar.LOCAL).date() == d
    # A bed blocked with a booking on it: the same.
    await stub.UpdateBedStatus(pb.UpdateBedStatusRequest(bed_id=f"{hospital}-B1", status=pb.BED_STATUS_FREE),
                               metadata=beds)
    await stub.UpdateBedStatus(pb.UpdateBedStatusRequest(bed_id=f"{hospital}-B2", status=pb.BED_STATUS_BLOCKED),
                               metadata=beds)
    assert await _bed_of(app, booking_id) == [f"{hospital}-B1"]
    # Cleaning readies a bed within hours: the admission keeps it.
    await stub.UpdateBedStatus(pb.UpdateBedStatusRequest(bed_id=f"{hospital}-B1", status=pb.BED_STATUS_CLEANING),
                               metadata=beds)
    assert await _bed_of(app, booking_id) == [f"{hospital}-B1"]
    assert (await _outbox(app, snap.referral_id)).count("BookingRescheduled") == 2


async def test_with_no_other_bed_the_admission_is_cancelled_and_the_referral_waitlisted(stack, app, stub, hospital):
    beds = stack.metadata(hospital, Role.BED_MANAGER)
    d = today() + timedelta(days=2)
    snap, booking_id = await _booked_on_b1(stack, stub, hospital, d)
    state = await stub.SetExpectedDischarge(pb.SetExpectedDischargeRequest(
        bed_id=f"{hospital}-B1", expected_discharge_date=pdate(d + timedelta(days=3))), metadata=beds)
    assert state.status == pb.BED_STATUS_OCCUPIED and state.booked_nights == 0
    async with app.ctx.pool.acquire() as conn:
        assert await conn.fetchval("SELECT state FROM bookings WHERE booking_id = $1", booking_id) == "CANCELLED"
        referral_row = await conn.fetchrow("SELECT state, reason_code, reason FROM referrals WHERE referral_id = $1",
                                           snap.referral_id)
    assert (referral_row["state"], referral_row["reason_code"]) == ("WAITLISTED", "BED_UNAVAILABLE")
    assert "候补" in referral_row["reason"]
    assert (await _outbox(app, snap.referral_id))[-2:] == ["BookingCancelled", "ReferralWaitlisted"]


async def test_an_admission_no_show_gives_back_the_rest_of_the_stay(stack, app, stub, hospital):
    await _two_beds(stub, stack, hospital)
    beds, desk = stack.metadata(hospital, Role.BED_MANAGER), stack.metadata(hospital, Role.REFERRAL_DESK)
    await stub.UpdateBedStatus(pb.UpdateBedStatusRequest(bed_id=f"{hospital}-B2", status=pb.BED_STATUS_BLOCKED),
                               metadata=beds)
    snap = referral(hospital, admission(nights=5), dates=[today()])
    result = await stub.AllocateReferral(pb.AllocateReferralRequest(referral=snap),
                                         metadata=stack.metadata("scheduler", Role.SERVICE))
    assert not result.waitlisted
    board = await stub.GetBedBoard(pb.GetBedBoardRequest(hospital_id=hospital), metadata=beds)
    assert board.beds[0].status == pb.BED_STATUS_HELD  # admission today: held

    async def free_nights() -> list[int]:
        listed = await stub.ListAvailability(pb.ListAvailabilityRequest(
            hospital_id=hospital, resource_type=pb.RESOURCE_TYPE_BED, from_date=pdate(today()),
            to_date=pdate(today() + timedelta(days=4))), metadata=desk)
        free = {(b.night.year, b.night.month, b.night.day): b.free_beds for b in listed.beds}
        days = [today() + timedelta(days=i) for i in range(5)]
        return [free.get((d.year, d.month, d.day), 0) for d in days]

    assert await free_nights() == [0] * 5
    await publish_event(app, revents.PatientNoShow(referral=snap), snap)
    for _ in range(100):
        if await app.ctx.pool.fetchval("SELECT state FROM bookings WHERE booking_id = $1",
                                       result.booking.booking_id) == "NO_SHOW":
            break
        await asyncio.sleep(0.1)
    # The first night stays the no-show's (counted as such); nights 2 to 5 are bookable again.
    assert await free_nights() == [0, 1, 1, 1, 1]
    board = await stub.GetBedBoard(pb.GetBedBoardRequest(hospital_id=hospital), metadata=beds)
    assert board.beds[0].status == pb.BED_STATUS_FREE and board.beds[0].booked_nights == 1
    got = await stub.GetBooking(pb.GetBookingRequest(name=result.booking.name), metadata=desk)
    assert got.state == pb.BOOKING_STATE_NO_SHOW and got.items[0].nights == 5
