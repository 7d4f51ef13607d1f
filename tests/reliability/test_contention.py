"""Many concurrent requests for few places: 500 allocations for 50 reserved outpatient
places, 200 for one bed, 200 holds of that bed. The database must end with no place,
bed-night or bed held twice."""
import asyncio
import time

import grpc

from scheduling.v1 import events_pb2, scheduling_service_pb2 as pb
from scheduling.v1 import scheduling_service_pb2_grpc as pb_grpc
from services.common.auth import Role
from tests.integration.scheduling.conftest import admission, consultation, referral, session, timedelta, today
from tests.reliability.flows import SCHEDULING_ENV, databases
from tests.support.processes import ServiceProcess, channel, started

PLACES, ALLOCATIONS = 50, 500
BED_ALLOCATIONS, HOLDS = 200, 200


async def _concurrently(calls) -> tuple[list, dict, float]:
    """Results of the calls run all at once, their error codes counted, and the wall time."""
    began = time.monotonic()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    errors: dict[str, int] = {}
    for o in outcomes:
        if isinstance(o, grpc.aio.AioRpcError):
            errors[o.code().name] = errors.get(o.code().name, 0) + 1
        elif isinstance(o, BaseException):
            raise o
    return [o for o in outcomes if not isinstance(o, BaseException)], errors, time.monotonic() - began


async def test_concurrent_requests_never_overbook(rstack, report):
    scheduling = ServiceProcess(rstack, "scheduling", **SCHEDULING_ENV, DB_POOL_MAX="20")
    hospital = f"H{time.time_ns() % 10**10:010d}"
    service = rstack.metadata("scheduler", Role.SERVICE)
    beds = rstack.metadata(hospital, Role.BED_MANAGER)
    async with started(scheduling), channel(scheduling.target) as ch, databases(rstack) as db:
        stub = pb_grpc.SchedulingServiceStub(ch)
        day = today() + timedelta(days=1)
        await stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[
            session(f"{hospital}-S1", day, total=2 * PLACES, reserved=PLACES, start="08:00", end="12:00", slot=15)]),
            metadata=rstack.metadata(hospital, Role.REFERRAL_DESK))
        places, place_errors, place_seconds = await _concurrently(
            stub.AllocateReferral(pb.AllocateReferralRequest(referral=referral(
                hospital, consultation(), clinic=f"CLINIC{i % 12 + 1:02d}")), metadata=service)
            for i in range(ALLOCATIONS))
        held = await db.scheduling.fetch(
            "SELECT bi.slot_id, bi.place_no, p.pool FROM booking_items bi JOIN slot_places p USING (slot_id, place_no) "
            "JOIN slots s USING (slot_id) WHERE s.hospital_id = $1", hospital)
        distinct_places = len({(r["slot_id"], r["place_no"]) for r in held})
        place_overbookings = (len(held) - distinct_places) + max(0, distinct_places - PLACES) + \
            sum(r["pool"] != "reserved" for r in held)

        bed = f"{hospital}-B1"
        await stub.UpsertBeds(pb.UpsertBedsRequest(hospital_id=hospital, hospital_name="测试县人民医院", wards=[pb.Ward(
            ward_id=f"{hospital}-W1", department="cardiology", name="心内科一病区",
            place=events_pb2.Place(building="住院楼", floor="5层"), rooms=[pb.WardRoom(
                room_id=f"{hospital}-R1", label="501", capacity=1, gender_policy=pb.GENDER_POLICY_SAME_GENDER, beds=[pb.BedSpec(bed_id=bed, label="1床")])])]),
            metadata=beds)
        # Admissions from the day after tomorrow: none is due today, so none is held at allocation.
        dates = [today() + timedelta(days=d) for d in range(2, 6)]
        stays, stay_errors, stay_seconds = await _concurrently(
            stub.AllocateReferral(pb.AllocateReferralRequest(referral=referral(
                hospital, admission(nights=2), clinic=f"CLINIC{i % 12 + 1:02d}", dates=dates)), metadata=service)
            for i in range(BED_ALLOCATIONS))
        nights = await db.scheduling.fetch(
            "SELECT bi.booking_id, bi.first_night, bi.nights FROM booking_items bi JOIN bookings b USING (booking_id) "
            "WHERE bi.bed_id = $1 AND b.state IN ('TENTATIVE', 'CONFIRMED')", bed)
        overlapping_stays = sum(
            1 for i, a in enumerate(nights) for b in nights[i + 1:]
            if a["first_night"] < b["first_night"] + timedelta(days=b["nights"])
            and b["first_night"] < a["first_night"] + timedelta(days=a["nights"]))
        bed_nights = await db.scheduling.fetchval("SELECT count(*) FROM bed_nights WHERE bed_id = $1", bed)
        booked_nights = sum(r["nights"] for r in nights)

        candidates = [r["booking_id"] for r in nights]
        holds, hold_errors, _ = await _concurrently(
            stub.HoldBed(pb.HoldBedRequest(bed_id=bed, booking_id=candidates[i % len(candidates)]), metadata=beds)
            for i in range(HOLDS)) if candidates else ([], {}, 0.0)
        holder = await db.scheduling.fetchrow("SELECT status, held_booking_id FROM beds WHERE bed_id = $1", bed)

    booked = sum(1 for r in places if not r.waitlisted)
    report("outpatient: concurrent allocations for reserved places", f"{ALLOCATIONS} for {PLACES}")
    report("outpatient: booked / waitlisted / errors", f"{booked} / {sum(r.waitlisted for r in places)} / {place_errors}")
    report("outpatient: places held", len(held))
    report("outpatient: overbookings", place_overbookings)
    report("outpatient: seconds for the burst", round(place_seconds, 1))
    report("bed: concurrent allocations for one bed", BED_ALLOCATIONS)
    report("bed: stays booked / errors", f"{sum(1 for r in stays if not r.waitlisted)} / {stay_errors}")
    report("bed: overlapping stays (overbookings)", overlapping_stays)
    report("bed: seconds for the burst", round(stay_seconds, 1))
    report("bed: concurrent HoldBed calls", f"{HOLDS} over {len(candidates)} bookings")
    report("bed: holds granted", len(holds))
    report("bed: hold refusals by code", hold_errors)
    assert booked == len(held) == PLACES and place_overbookings == 0 and not place_errors
    assert candidates and overlapping_stays == 0 and bed_nights == booked_nights and not stay_errors
    assert len(holds) == 1 and holder["status"] == "HELD" and holder["held_booking_id"] in candidates
    assert set(hold_errors) == {"FAILED_PRECONDITION"}
