"""The bed board records what happens on the ward; the bookings on a bed that will not be
free follow it (moved, or waitlisted), and a no-show's admission gives back its stay."""
import asyncio
from dataclasses import dataclass, replace

from referral.v1 import events_pb2 as revents
from scheduling.v1 import events_pb2, scheduling_service_pb2 as pb
from services.common.auth import Role
from services.scheduling import engine
from services.scheduling.domain import calendar
from services.scheduling.domain.beds import BedStatus
from services.scheduling.service_layer import bedboard
from services.scheduling.service_layer.allocation import Scheduler
from tests.support.metrics import metric

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


async def _ward(stub, stack, hospital, *beds: str):
    """One ward, one room of these beds (any gender), every bed but the first blocked: the
    admissions booked next all land on the first."""
    manager = stack.metadata(hospital, Role.BED_MANAGER)
    await stub.UpsertBeds(pb.UpsertBedsRequest(hospital_id=hospital, wards=[pb.Ward(
        ward_id=f"{hospital}-W1", department="cardiology", name="心内科一病区",
        place=events_pb2.Place(building="住院楼", floor="5层"), rooms=[pb.WardRoom(
            room_id=f"{hospital}-R1", label="501", capacity=len(beds), gender_policy=pb.GENDER_POLICY_ANY,
            beds=[pb.BedSpec(bed_id=f"{hospital}-{b}", label=f"{b}床") for b in beds])])]), metadata=manager)
    for b in beds[1:]:
        await stub.UpdateBedStatus(pb.UpdateBedStatusRequest(bed_id=f"{hospital}-{b}", status=pb.BED_STATUS_BLOCKED),
                                   metadata=manager)


async def _one_night_on(stack, stub, hospital, days: list, bed: str) -> tuple[str, str]:
    snap = referral(hospital, admission(nights=1), dates=days)
    result = await stub.AllocateReferral(pb.AllocateReferralRequest(referral=snap),
                                         metadata=stack.metadata("scheduler", Role.SERVICE))
    assert not result.waitlisted and result.booking.items[0].bed == f"{bed}床"
    return snap.referral_id, result.booking.booking_id


async def _free_from(stack, stub, hospital, bed: str, day) -> None:
    """A blocked bed back in use, its patient leaving on `day`: bookable from that night on."""
    manager = stack.metadata(hospital, Role.BED_MANAGER)
    await stub.UpdateBedStatus(pb.UpdateBedStatusRequest(bed_id=f"{hospital}-{bed}", status=pb.BED_STATUS_FREE),
                               metadata=manager)
    await stub.UpdateBedStatus(pb.UpdateBedStatusRequest(bed_id=f"{hospital}-{bed}", status=pb.BED_STATUS_OCCUPIED,
                                                         expected_discharge_date=pdate(day)), metadata=manager)


async def _block(stack, stub, hospital, bed: str) -> None:
    await stub.UpdateBedStatus(pb.UpdateBedStatusRequest(bed_id=f"{hospital}-{bed}", status=pb.BED_STATUS_BLOCKED),
                               metadata=stack.metadata(hospital, Role.BED_MANAGER))


async def _four_on_b0_two_nights_free(stack, stub, hospital) -> tuple[list, object]:
    """Four admissions on B0 (nights 1 to 4, each patient free on any of them); B1 and B2
    have only night 4 free once B0 is gone."""
    days = [today() + timedelta(days=i) for i in range(1, 5)]
    await _ward(stub, stack, hospital, "B0", "B1", "B2")
    booked = [await _one_night_on(stack, stub, hospital, days, "B0") for _ in days]
    for bed in ("B1", "B2"):
        await _free_from(stack, stub, hospital, bed, days[-1])
    return booked, days[-1]


async def _two_moved_two_waitlisted(app, hospital, booked, night) -> None:
    """Two moved, one to each free bed-night; the other two cancelled and waitlisted; each told once."""
    async with app.ctx.pool.acquire() as conn:
        states = {r["booking_id"]: r["state"] for r in await conn.fetch(
            "SELECT booking_id, state FROM bookings WHERE booking_id = ANY($1::text[])", [b for _, b in booked])}
        nights = await conn.fetch("""
            SELECT n.bed_id, n.night, bi.booking_id FROM bed_nights n JOIN booking_items bi USING (item_id)
             WHERE bi.booking_id = ANY($1::text[])""", [b for _, b in booked])
        waitlisted = await conn.fetch("SELECT state, reason_code FROM referrals WHERE referral_id = ANY($1::text[]) "
                                      "AND state = 'WAITLISTED'", [r for r, _ in booked])
    moved = [b for b, s in states.items() if s in ("TENTATIVE", "CONFIRMED")]
    assert len(moved) == 2 and list(states.values()).count("CANCELLED") == 2
    assert sorted((n["bed_id"], n["night"]) for n in nights) == [(f"{hospital}-B1", night), (f"{hospital}-B2", night)]
    assert sorted(n["booking_id"] for n in nights) == sorted(moved)
    assert [r["reason_code"] for r in waitlisted] == ["BED_UNAVAILABLE"] * 2
    for referral_id, booking_id in booked:
        told = await _told(app, referral_id)
        if booking_id in moved:
            assert told[1:] == ["BookingRescheduled"]
        else:
            assert told[1:] == ["BookingCancelled", "ReferralWaitlisted"]


async def test_a_blocked_bed_moves_as_many_admissions_as_there_are_free_beds_and_waitlists_the_rest(
        stack, app, stub, hospital):
    booked, night = await _four_on_b0_two_nights_free(stack, stub, hospital)
    solves = metric("scheduling_solve_seconds_count", kind="displace")
    await _block(stack, stub, hospital, "B0")
    # One engine run for the four, inside the bed manager's call.
    assert metric("scheduling_solve_seconds_count", kind="displace") - solves == 1
    await _two_moved_two_waitlisted(app, hospital, booked, night)


@dataclass
class _DoubleBookingEngine(Scheduler):
    """An engine run for displaced bookings that puts every admission on the first one's
    bed and nights, as a writer past the hospital's lock could make it look."""

    async def solve(self, problem, kind):
        solution = await super().solve(problem, kind)
        if kind != "displace":
            return solution
        first = next(a for a in solution.assignments if a.kind == engine.ItemKind.ADMISSION)
        return replace(solution, assignments=tuple(
            replace(a, resource_id=first.resource_id, day=first.day, nights=first.nights)
            if a.kind == engine.ItemKind.ADMISSION else a for a in solution.assignments))


async def test_a_bed_night_given_twice_by_the_joint_run_is_refused_and_each_booking_displaced_on_its_own(
        stack, app, stub, hospital):
    booked, night = await _four_on_b0_two_nights_free(stack, stub, hospital)
    joint, one_by_one = (metric("scheduling_solve_seconds_count", kind=k) for k in ("displace", "reschedule"))
    async with app.ctx.pool.acquire() as conn, conn.transaction():
        await bedboard.update_status(conn, _DoubleBookingEngine(), f"{hospital}-B0", hospital, BedStatus.BLOCKED, None)
    # The bed-night key refused the joint plan; the four went through the engine again, one by one.
    assert metric("scheduling_solve_seconds_count", kind="displace") - joint == 1
    assert metric("scheduling_solve_seconds_count", kind="reschedule") - one_by_one == 4
    await _two_moved_two_waitlisted(app, hospital, booked, night)


async def test_admissions_displaced_together_are_placed_together(stack, app, stub, hospital):
    """On B0: P on night 1 (free on nights 1, 3 or 4) and Q on night 3 (night 3 only). B1
    is free from night 3. Placing P first, by its earliest night, would give it night 3 and
    leave Q without a bed; placed together, P takes night 4 and both keep their admission."""
    d1, d3, d4 = (today() + timedelta(days=i) for i in (1, 3, 4))
    await _ward(stub, stack, hospital, "B0", "B1")
    q = await _one_night_on(stack, stub, hospital, [d3], "B0")
    p = await _one_night_on(stack, stub, hospital, [d1, d3, d4], "B0")
    assert await _first_night(app, p[1]) == d1
    await _free_from(stack, stub, hospital, "B1", d3)
    await _block(stack, stub, hospital, "B0")
    for (referral_id, booking_id), night in ((p, d4), (q, d3)):
        assert await _bed_of(app, booking_id) == [f"{hospital}-B1"]
        assert await _first_night(app, booking_id) == night
        assert (await _told(app, referral_id))[1:] == ["BookingRescheduled"]


async def _first_night(app, booking_id: str):
    return await app.ctx.pool.fetchval("SELECT min(night) FROM bed_nights n JOIN booking_items bi USING (item_id) "
                                       "WHERE bi.booking_id = $1", booking_id)


async def _told(app, referral_id: str) -> list[str]:
    """The referral's events in the order written (one transaction's share a created_at)."""
    rows = await app.ctx.pool.fetch("SELECT event_type FROM outbox WHERE aggregate_id = $1 ORDER BY seq", referral_id)
    return [r["event_type"].split(".")[-1] for r in rows]


async def _board(stub, stack, hospital) -> dict[str, tuple[int, str]]:
    """Each bed's (status, booking it is held for)."""
    board = await stub.GetBedBoard(pb.GetBedBoardRequest(hospital_id=hospital),
                                   metadata=stack.metadata(hospital, Role.BED_MANAGER))
    return {b.bed_id: (b.status, b.held_booking_id) for b in board.beds}


async def _bed_ready(app, booking_id: str) -> int:
    return await app.ctx.pool.fetchval("SELECT count(*) FROM outbox WHERE aggregate_id = $1 AND event_type LIKE "
                                       "'%.BedReady'", booking_id)


async def test_an_admission_displaced_to_a_bed_for_tonight_has_that_bed_held(stack, app, stub, hospital):
    # Tonight's admission on B1, whose patient leaves today: booked, not held (the bed is not free yet).
    snap, booking_id = await _booked_on_b1(stack, stub, hospital, today())
    assert (await _board(stub, stack, hospital))[f"{hospital}-B1"] == (pb.BED_STATUS_OCCUPIED, "")
    beds = stack.metadata(hospital, Role.BED_MANAGER)
    await stub.UpdateBedStatus(pb.UpdateBedStatusRequest(bed_id=f"{hospital}-B2", status=pb.BED_STATUS_FREE),
                               metadata=beds)
    # B1 is taken out of use: the admission moves to B2 for tonight, which a walk-in must not get.
    await stub.UpdateBedStatus(pb.UpdateBedStatusRequest(bed_id=f"{hospital}-B1", status=pb.BED_STATUS_BLOCKED),
                               metadata=beds)
    assert await _bed_of(app, booking_id) == [f"{hospital}-B2"] and await _first_night(app, booking_id) == today()
    assert await _board(stub, stack, hospital) == {f"{hospital}-B1": (pb.BED_STATUS_BLOCKED, ""),
                                                   f"{hospital}-B2": (pb.BED_STATUS_HELD, booking_id)}
    assert await _bed_ready(app, booking_id) == 1
    assert (await _told(app, snap.referral_id))[1:] == ["BookingRescheduled"]


async def test_a_reschedule_to_tonight_holds_the_new_bed_and_releases_the_old_one(stack, app, stub, hospital):
    """B1 (room without oxygen) held for tonight's admission; once B2 (with the oxygen the
    patient prefers) is free, a reschedule moves the admission there: B2 held, B1 free."""
    beds, desk = stack.metadata(hospital, Role.BED_MANAGER), stack.metadata(hospital, Role.REFERRAL_DESK)
    await stub.UpsertBeds(pb.UpsertBedsRequest(hospital_id=hospital, wards=[pb.Ward(
        ward_id=f"{hospital}-W1", department="cardiology", name="心内科一病区",
        place=events_pb2.Place(building="住院楼", floor="5层"), rooms=[
            pb.WardRoom(room_id=f"{hospital}-R1", label="501", capacity=1, gender_policy=pb.GENDER_POLICY_ANY,
                        beds=[pb.BedSpec(bed_id=f"{hospital}-B1", label="1床")]),
            pb.WardRoom(room_id=f"{hospital}-R2", label="502", capacity=1, gender_policy=pb.GENDER_POLICY_ANY,
                        equipment=["oxygen"], beds=[pb.BedSpec(bed_id=f"{hospital}-B2", label="2床")])])]),
        metadata=beds)
    await _block(stack, stub, hospital, "B2")
    stay = admission(nights=2)
    stay.admission.preferred_equipment.append("oxygen")
    result = await stub.AllocateReferral(pb.AllocateReferralRequest(referral=referral(hospital, stay, dates=[today()])),
                                         metadata=stack.metadata("scheduler", Role.SERVICE))
    booking_id = result.booking.booking_id
    assert result.booking.items[0].bed == "1床"
    assert (await _board(stub, stack, hospital))[f"{hospital}-B1"] == (pb.BED_STATUS_HELD, booking_id)
    await stub.UpdateBedStatus(pb.UpdateBedStatusRequest(bed_id=f"{hospital}-B2", status=pb.BED_STATUS_FREE),
                               metadata=beds)
    moved = await stub.Reschedule(pb.RescheduleRequest(name=result.booking.name, available_dates=[pdate(today())]),
                                  metadata=desk)
    assert moved.items[0].bed == "2床"
    assert await _board(stub, stack, hospital) == {f"{hospital}-B1": (pb.BED_STATUS_FREE, ""),
                                                   f"{hospital}-B2": (pb.BED_STATUS_HELD, booking_id)}
    assert await _bed_ready(app, booking_id) == 2  # one per bed the patient was sent to
    # Cancelled, the booking gives the held bed back.
    await stub.CancelBooking(pb.CancelBookingRequest(name=result.booking.name), metadata=desk)
    assert (await _board(stub, stack, hospital))[f"{hospital}-B2"] == (pb.BED_STATUS_FREE, "")
