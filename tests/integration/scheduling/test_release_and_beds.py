"""Release at the deadline, and bed board changes freeing capacity for the waitlist."""
import asyncio
from datetime import datetime

import asyncpg
import grpc
import pytest

from scheduling.v1 import events_pb2, scheduling_service_pb2 as pb
from services.common.auth import Role
from services.scheduling.domain import calendar
from services.scheduling.service_layer import jobs

from tests.support.membership import publish_members, wait_members

from .conftest import admission, consultation, pdate, referral, session, timedelta, today, types_pb2


async def test_unbooked_reserved_places_are_released_at_the_deadline(stack, app, stub, events, hospital):
    desk = stack.metadata(hospital, Role.REFERRAL_DESK)
    await stub.SetReservationPolicy(pb.SetReservationPolicyRequest(policy=pb.ReservationPolicy(
        hospital_id=hospital, resource_type=pb.RESOURCE_TYPE_OUTPATIENT, reserved_share=0.3, release_hours=24)),
        metadata=desk)
    soon, later = today() + timedelta(days=3), today() + timedelta(days=6)
    await stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[
        session(f"{hospital}-S1", soon, total=10, reserved=0, start="08:00", end="09:00"),
        session(f"{hospital}-S2", later, total=10, reserved=3, start="08:00", end="09:00")]), metadata=desk)
    booked = await stub.AllocateReferral(pb.AllocateReferralRequest(referral=referral(hospital, dates=[soon])),
                                         metadata=stack.metadata("scheduler", Role.SERVICE))
    assert not booked.waitlisted
    # Nothing is due yet; 23 hours before `soon` 08:00 the first session's unbooked places are.
    assert await jobs.release_due(app.ctx.pool, datetime.now(calendar.LOCAL), hospital) == 0
    deadline = calendar.at(soon, 8 * 60) - timedelta(hours=23)
    assert await jobs.release_due(app.ctx.pool, deadline, hospital) == 2  # 30 % of 10 = 3, one booked
    assert await jobs.release_due(app.ctx.pool, deadline, hospital) == 0  # once only
    released = await events.wait("CapacityReleased", count=1)
    for _ in range(50):
        if sum(e.places for e in released) == 2:
            break
        await asyncio.sleep(0.1)
        released = events.of("CapacityReleased")
    assert sum(e.places for e in released) == 2 and released[0].resource_type == "outpatient"
    assert released[0].department == "cardiology"
    util = await stub.GetUtilization(pb.GetUtilizationRequest(hospital_id=hospital, to_date=pdate(later)),
                                     metadata=desk)
    reserved = next(p for p in util.pools if p.resource_type == pb.RESOURCE_TYPE_OUTPATIENT and p.pool == "reserved")
    assert (reserved.places, reserved.booked, reserved.released, reserved.open) == (6, 1, 2, 3)
    # A clinic doctor reads availability of its own consortium's hospitals (membership by events).
    # A clinic id of this test only: the demo consortium's CLINIC05, published by other
    # tests on the same stream, must not be the row this waits for.
    clinic = f"K{hospital}"
    await publish_members(app.ctx.broker, f"C-{hospital}", hospital, clinic)
    await wait_members(app.ctx.pool, hospital, clinic)
    listed = await stub.ListAvailability(pb.ListAvailabilityRequest(
        hospital_id=hospital, resource_type=pb.RESOURCE_TYPE_OUTPATIENT, to_date=pdate(later)),
        metadata=stack.metadata(clinic, Role.CLINIC_DOCTOR))
    assert sum(s.free_places for s in listed.slots) == 3
    assert all(s.start_time.ToDatetime().date() >= later - timedelta(days=1) for s in listed.slots)


async def test_a_waitlist_reason_says_when_the_window_s_reserved_places_were_released(stack, app, stub, hospital):
    """An urgent referral must be booked within 2 days; the hospital returns reserved
    places 24 h ahead. With its only session's places already back in the general pool,
    the referral is waitlisted, and the reason tells the desk that, not just "no slot"."""
    desk = stack.metadata(hospital, Role.REFERRAL_DESK)
    await stub.SetReservationPolicy(pb.SetReservationPolicyRequest(policy=pb.ReservationPolicy(
        hospital_id=hospital, resource_type=pb.RESOURCE_TYPE_OUTPATIENT, reserved_share=0.3, release_hours=24)),
        metadata=desk)
    day = today() + timedelta(days=2)
    await stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[
        session(f"{hospital}-S1", day, total=10, reserved=3, start="08:00", end="09:00")]), metadata=desk)
    service = stack.metadata("scheduler", Role.SERVICE)
    # The release job as it runs 23 h before the session.
    assert await jobs.release_due(app.ctx.pool, calendar.at(day, 8 * 60) - timedelta(hours=23), hospital) == 3
    urgent = await stub.AllocateReferral(pb.AllocateReferralRequest(
        referral=referral(hospital, urgency=types_pb2.URGENCY_URGENT, dates=[day])), metadata=service)
    assert urgent.waitlisted and urgent.reason_code == "NO_CONSULTATION_SLOT_BEFORE_DEADLINE"
    assert "退回普通号池" in urgent.reason
    # Another department had nothing released: its reason stays the plain one.
    other = await stub.AllocateReferral(pb.AllocateReferralRequest(referral=referral(
        hospital, consultation("neurology"), urgency=types_pb2.URGENCY_URGENT, dates=[day])), metadata=service)
    assert other.waitlisted and "退回普通号池" not in other.reason


async def _ward(stub, stack, hospital, status_md):
    await stub.UpsertBeds(pb.UpsertBedsRequest(hospital_id=hospital, hospital_name="示范县人民医院", wards=[pb.Ward(
        ward_id=f"{hospital}-W1", department="cardiology", name="心内科一病区",
        place=events_pb2.Place(building="住院楼", floor="5层"), rooms=[pb.WardRoom(
            room_id=f"{hospital}-R501", label="501", capacity=2, gender_policy=pb.GENDER_POLICY_SAME_GENDER,
            equipment=["oxygen", "telemetry"], beds=[pb.BedSpec(bed_id=f"{hospital}-B1", label="1床")])])]),
        metadata=status_md)


async def test_discharge_and_cleaning_free_a_bed_for_a_waitlisted_admission(stack, app, stub, events, hospital):
    beds = stack.metadata(hospital, Role.BED_MANAGER)
    bed = f"{hospital}-B1"
    await _ward(stub, stack, hospital, beds)
    await _ward(stub, stack, hospital, beds)  # idempotent
    state = await stub.UpdateBedStatus(pb.UpdateBedStatusRequest(bed_id=bed, status=pb.BED_STATUS_OCCUPIED),
                                       metadata=beds)
    assert state.status == pb.BED_STATUS_OCCUPIED
    snap = referral(hospital, admission(nights=3, required=["telemetry"]), gender=2)
    result = await stub.AllocateReferral(pb.AllocateReferralRequest(referral=snap),
                                         metadata=stack.metadata("scheduler", Role.SERVICE))
    assert result.waitlisted and result.reason_code
    await stub.UpdateBedStatus(pb.UpdateBedStatusRequest(bed_id=bed, status=pb.BED_STATUS_CLEANING), metadata=beds)
    with pytest.raises(grpc.aio.AioRpcError) as err:  # cleaning is not a discharge date
        await stub.SetExpectedDischarge(pb.SetExpectedDischargeRequest(
            bed_id=bed, expected_discharge_date=pdate(today())), metadata=beds)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not events.of("ReferralScheduled")
    await stub.UpdateBedStatus(pb.UpdateBedStatusRequest(bed_id=bed, status=pb.BED_STATUS_FREE), metadata=beds)
    scheduled, = await events.wait("ReferralScheduled", referral_id=snap.referral_id)
    stay = scheduled.items[0]
    assert stay.kind == events_pb2.ITEM_KIND_ADMISSION and stay.nights == 3 and stay.bed == "1床"
    assert stay.ward == "心内科一病区" and stay.place.room == "501"
    # Admission today: the bed is held on the board and the patient told it is ready.
    ready, = await events.wait("BedReady", referral_id=snap.referral_id)
    assert ready.bed == "1床"
    board = await stub.GetBedBoard(pb.GetBedBoardRequest(hospital_id=hospital), metadata=beds)
    assert board.beds[0].status == pb.BED_STATUS_HELD and board.beds[0].held_referral_id == snap.referral_id
    assert board.beds[0].booked_nights == 3
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateBedStatus(pb.UpdateBedStatusRequest(bed_id=bed, status=pb.BED_STATUS_CLEANING), metadata=beds)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Another hospital's bed manager does not see this bed at all.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateBedStatus(pb.UpdateBedStatusRequest(bed_id=bed, status=pb.BED_STATUS_FREE),
                                   metadata=stack.metadata("HOSPX", Role.BED_MANAGER))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # A bed-night has one holder, enforced by the database.
    async with app.ctx.pool.acquire() as conn:
        night, item = await conn.fetchrow("SELECT night, item_id FROM bed_nights WHERE bed_id = $1 LIMIT 1", bed)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO bed_nights (bed_id, night, item_id) VALUES ($1, $2, $3)", bed, night, item)
