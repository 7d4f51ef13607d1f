"""What live bookings' patients were told stays as told: republishing a booked session or
exam channel may not change its department, doctor, place or modality; a booked bed keeps
its ward, room and pool, and its room what the admission was placed for."""
from datetime import datetime

import grpc
import pytest

from scheduling.v1 import events_pb2, scheduling_service_pb2 as pb
from services.common.auth import Role
from services.scheduling.domain import calendar
from services.scheduling.service_layer.allocation import Scheduler, allocate
from tests.support.rpc_errors import reason

from .conftest import admission, exam, pdate, referral, session, timedelta, today


async def _refused(call, *fields: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(err.value) == "CAPACITY_BOOKED"
    for f in fields:
        assert f in err.value.details()


async def test_a_booked_session_keeps_its_department_doctor_and_place(stack, app, stub, hospital):
    desk = stack.metadata(hospital, Role.REFERRAL_DESK)
    day = today() + timedelta(days=2)
    booked, free = session(f"{hospital}-S1", day), session(f"{hospital}-S2", day + timedelta(days=1))
    await stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[booked]), metadata=desk)
    result = await stub.AllocateReferral(pb.AllocateReferralRequest(referral=referral(hospital, dates=[day])),
                                         metadata=stack.metadata("scheduler", Role.SERVICE))
    assert not result.waitlisted
    for change, field in ((lambda s: setattr(s.place, "room", "心内科5诊室"), "sessions[1].place.room"),
                          (lambda s: setattr(s, "doctor_id", "D-OTHER"), "sessions[1].doctor_id"),
                          (lambda s: setattr(s, "department", "neurology"), "sessions[1].department"),
                          (lambda s: setattr(s.place, "building", "新门诊楼"), "sessions[1].place.building")):
        moved = pb.OutpatientSession()
        moved.CopyFrom(booked)
        change(moved)
        await _refused(stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[free, moved]),
                                            metadata=desk), field)
    got = await stub.GetBooking(pb.GetBookingRequest(name=result.booking.name), metadata=desk)
    assert got.items[0].place.room == "心内科3诊室" and got.items[0].department == "cardiology"
    # A name corrected for the same doctor is no change of doctor; an unbooked session may move.
    booked.doctor_name = "王大夫"
    free.place.room, free.doctor_id, free.department = "心内科5诊室", "D-OTHER", "neurology"
    await stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[free, booked]), metadata=desk)
    # Once the booking is cancelled, the session is free to change.
    await stub.CancelBooking(pb.CancelBookingRequest(name=result.booking.name), metadata=desk)
    booked.place.room = "心内科5诊室"
    await stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[booked]), metadata=desk)


async def test_a_booked_exam_channel_keeps_its_modality_and_place(stack, app, stub, hospital):
    desk = stack.metadata(hospital, Role.REFERRAL_DESK)
    day = today() + timedelta(days=2)
    ct = pb.ExamChannel(channel_id=f"{hospital}-CT1", modality="CT", slot_minutes=20,
                        place=events_pb2.Place(building="医技楼", floor="1层", room="CT室1"))
    idle = pb.ExamChannel(channel_id=f"{hospital}-CT2", modality="CT", slot_minutes=20,
                          place=events_pb2.Place(building="医技楼", floor="1层", room="CT室2"))
    await stub.PublishExamCapacity(pb.PublishExamCapacityRequest(hospital_id=hospital, channels=[ct, idle], capacity=[
        pb.ExamDayCapacity(channel_id=ct.channel_id, date=pdate(day), start_time="08:00", end_time="09:00",
                           reserved_places=3)]), metadata=desk)
    result = await stub.AllocateReferral(pb.AllocateReferralRequest(referral=referral(
        hospital, exam("CT"), dates=[day])), metadata=stack.metadata("scheduler", Role.SERVICE))
    assert not result.waitlisted and result.booking.items[0].place.room == "CT室1"
    for change, field in ((lambda c: setattr(c.place, "room", "CT室3"), "channels[0].place.room"),
                          (lambda c: setattr(c.place, "floor", "2层"), "channels[0].place.floor"),
                          (lambda c: setattr(c, "modality", "MRI"), "channels[0].modality")):
        moved = pb.ExamChannel()
        moved.CopyFrom(ct)
        change(moved)
        await _refused(stub.PublishExamCapacity(pb.PublishExamCapacityRequest(
            hospital_id=hospital, channels=[moved, idle]), metadata=desk), field)
    got = await stub.GetBooking(pb.GetBookingRequest(name=result.booking.name), metadata=desk)
    assert got.items[0].place.room == "CT室1" and got.items[0].modality == "CT"
    # The channel without bookings may move.
    idle.place.room, idle.modality = "CT室3", "MRI"
    await stub.PublishExamCapacity(pb.PublishExamCapacityRequest(hospital_id=hospital, channels=[ct, idle]),
                                   metadata=desk)


async def test_a_visit_behind_us_relies_on_nothing_but_one_from_today_does(stack, app, stub, hospital):
    """Nobody may record that a patient came (the booking stays CONFIRMED): the CT moved to
    another room months later is not refused for the visits it has already served."""
    desk = stack.metadata(hospital, Role.REFERRAL_DESK)
    scheduler = stack.metadata("scheduler", Role.SERVICE)
    ct = pb.ExamChannel(channel_id=f"{hospital}-CT1", modality="CT", slot_minutes=20,
                        place=events_pb2.Place(building="医技楼", floor="1层", room="CT室1"))

    async def book_ct(day) -> str:
        await stub.PublishExamCapacity(pb.PublishExamCapacityRequest(hospital_id=hospital, channels=[ct], capacity=[
            pb.ExamDayCapacity(channel_id=ct.channel_id, date=pdate(day), start_time="08:00", end_time="09:00",
                               reserved_places=3)]), metadata=desk)
        result = await stub.AllocateReferral(pb.AllocateReferralRequest(referral=referral(
            hospital, exam("CT"), dates=[day])), metadata=scheduler)
        assert not result.waitlisted
        return result.booking.name

    await book_ct(today() + timedelta(days=2))
    # Time passes: that visit's slots are now ten days ago, its booking still live.
    await app.ctx.pool.execute("UPDATE slots SET start_at = start_at - interval '12 days' WHERE channel_id = $1",
                               ct.channel_id)
    upcoming = await book_ct(today() + timedelta(days=1))
    assert await app.ctx.pool.fetchval(
        "SELECT count(*) FROM bookings b JOIN booking_items bi USING (booking_id) JOIN slots s USING (slot_id) "
        "WHERE s.channel_id = $1 AND b.state IN ('TENTATIVE', 'CONFIRMED')", ct.channel_id) == 2
    moved = pb.ExamChannel()
    moved.CopyFrom(ct)
    moved.place.room = "CT室3"
    await _refused(stub.PublishExamCapacity(pb.PublishExamCapacityRequest(hospital_id=hospital, channels=[moved]),
                                            metadata=desk), "channels[0].place.room（房间，1个有效预约）")
    await stub.CancelBooking(pb.CancelBookingRequest(name=upcoming), metadata=desk)
    await stub.PublishExamCapacity(pb.PublishExamCapacityRequest(hospital_id=hospital, channels=[moved]),
                                   metadata=desk)


def _wards(hospital: str) -> list[pb.Ward]:
    """W2 (neurology, never booked) and W1 (cardiology): room R1 of W1, any gender, with
    oxygen and isolation, has bed B1, where the admissions below land."""
    def ward(n: int, department: str, name: str, equipment: list[str]) -> pb.Ward:
        return pb.Ward(ward_id=f"{hospital}-W{n}", department=department, name=name,
                       place=events_pb2.Place(building="住院楼", floor=f"{4 + n}层"), rooms=[pb.WardRoom(
                           room_id=f"{hospital}-R{n}", label=f"{4 + n}01", capacity=2,
                           gender_policy=pb.GENDER_POLICY_ANY, equipment=equipment,
                           beds=[pb.BedSpec(bed_id=f"{hospital}-B{n}", label="1床")])])
    return [ward(2, "neurology", "神经内科病区", ["oxygen"]), ward(1, "cardiology", "心内科一病区", ["oxygen", "isolation"])]


def _changed(wards: list[pb.Ward], change) -> list[pb.Ward]:
    out = [pb.Ward() for _ in wards]
    for copy, w in zip(out, wards):
        copy.CopyFrom(w)
    change(out)
    return out


def _bed_to_new_room(wards: list[pb.Ward]) -> None:
    room = wards[1].rooms[0]
    wards[1].rooms.add(room_id=f"{room.room_id}b", label="502", capacity=1, gender_policy=room.gender_policy,
                       equipment=room.equipment, beds=[room.beds[0]])
    del room.beds[0]


def _room_to_other_ward(wards: list[pb.Ward]) -> None:
    wards[0].rooms.add().CopyFrom(wards[1].rooms[0])
    del wards[1].rooms[:]


# What a live admission on B1 (a woman of 60 who needs oxygen, routine) relies on, with
# the field each change is refused for once its room is made women-only.
_RELIED_ON = (
    (lambda ws: setattr(ws[1], "department", "neurology"), "wards[1].department（科室"),
    (lambda ws: setattr(ws[1], "name", "心内科二病区"), "wards[1].name"),
    (lambda ws: setattr(ws[1].place, "floor", "7层"), "wards[1].place.floor"),
    (lambda ws: setattr(ws[1], "max_age", 50), "wards[1].max_age"),
    (_room_to_other_ward, "wards[0].rooms[1]（所在病区"),
    (lambda ws: setattr(ws[1].rooms[0], "label", "503"), "wards[1].rooms[0].label"),
    (lambda ws: setattr(ws[1].rooms[0], "gender_policy", pb.GENDER_POLICY_MALE), "wards[1].rooms[0].gender_policy"),
    (lambda ws: setattr(ws[1].rooms[0], "gender_policy", pb.GENDER_POLICY_ANY), "wards[1].rooms[0].gender_policy"),
    (lambda ws: setattr(ws[1].rooms[0], "gender_policy", pb.GENDER_POLICY_SAME_GENDER),
     "wards[1].rooms[0].gender_policy"),
    (lambda ws: ws[1].rooms[0].equipment.remove("oxygen"), "wards[1].rooms[0].equipment"),
    (_bed_to_new_room, "wards[1].rooms[1].beds[0]（所在房间"),
    (lambda ws: setattr(ws[1].rooms[0].beds[0], "label", "2床"), "wards[1].rooms[0].beds[0].label"),
    (lambda ws: setattr(ws[1].rooms[0].beds[0], "overflow", True), "wards[1].rooms[0].beds[0].overflow"),
)


def _all_relied_on(wards: list[pb.Ward]) -> None:
    """Every change at once; the bed leaves its room, so the room stays in its ward."""
    for change, _ in _RELIED_ON:
        if change not in (_room_to_other_ward, _bed_to_new_room):
            change(wards)
    _bed_to_new_room(wards)


async def test_a_booked_bed_keeps_its_ward_room_and_pool(stack, app, stub, hospital):
    manager, desk = stack.metadata(hospital, Role.BED_MANAGER), stack.metadata(hospital, Role.REFERRAL_DESK)
    wards = _wards(hospital)
    await stub.UpsertBeds(pb.UpsertBedsRequest(hospital_id=hospital, wards=wards), metadata=manager)
    result = await stub.AllocateReferral(pb.AllocateReferralRequest(referral=referral(
        hospital, admission(required=("oxygen",)), dates=[today() + timedelta(days=2)])),
        metadata=stack.metadata("scheduler", Role.SERVICE))
    assert not result.waitlisted and result.booking.items[0].ward == "心内科一病区"

    def fitting(ws: list[pb.Ward]) -> None:
        """What the booked patient still fits, and what she was not promised."""
        ws[1].rooms[0].gender_policy = pb.GENDER_POLICY_FEMALE
        ws[1].rooms[0].equipment[:] = ["oxygen", "telemetry"]  # isolation was not required
        ws[1].rooms[0].capacity = 3
        ws[1].rooms[0].beds.add(bed_id=f"{hospital}-B3", label="3床", overflow=True)
        ws[1].min_age, ws[1].specialisms[:] = 18, ["heart failure"]
        # The ward nobody is booked in may change in every way.
        ws[0].department, ws[0].name, ws[0].rooms[0].gender_policy = "cardiology", "心内科二病区", pb.GENDER_POLICY_MALE
        del ws[0].rooms[0].equipment[:]
        ws[0].rooms[0].beds[0].overflow = True
    wards = _changed(wards, fitting)
    await stub.UpsertBeds(pb.UpsertBedsRequest(hospital_id=hospital, wards=wards), metadata=manager)
    for change, field in _RELIED_ON:
        await _refused(stub.UpsertBeds(pb.UpsertBedsRequest(hospital_id=hospital, wards=_changed(wards, change)),
                                       metadata=manager), field, "1个有效预约")
    # Refused all at once, every field is named (the bed's by its new place in the request).
    await _refused(stub.UpsertBeds(pb.UpsertBedsRequest(hospital_id=hospital, wards=_changed(wards, _all_relied_on)),
                                   metadata=manager),
                   *(f"wards[1].{f}（" for f in ("department", "name", "place.floor", "max_age", "rooms[0].label",
                                                "rooms[0].gender_policy", "rooms[0].equipment", "rooms[1].beds[0]",
                                                "rooms[1].beds[0].label", "rooms[1].beds[0].overflow")))
    got = await stub.GetBooking(pb.GetBookingRequest(name=result.booking.name), metadata=desk)
    assert (got.items[0].department, got.items[0].ward, got.items[0].place.floor, got.items[0].place.room,
            got.items[0].bed) == ("cardiology", "心内科一病区", "5层", "501", "1床")
    board = {b.bed_id: b for b in (await stub.GetBedBoard(pb.GetBedBoardRequest(hospital_id=hospital),
                                                          metadata=manager)).beds}
    b1 = board[f"{hospital}-B1"]
    assert (b1.room_id, b1.gender_policy, list(b1.equipment)) == (
        f"{hospital}-R1", pb.GENDER_POLICY_FEMALE, ["oxygen", "telemetry"])
    assert await app.ctx.pool.fetchval("SELECT pool FROM beds WHERE bed_id = $1", f"{hospital}-B1") == "reserved"
    # Once the booking is cancelled, nothing relies on the ward any more.
    await stub.CancelBooking(pb.CancelBookingRequest(name=result.booking.name), metadata=desk)
    await stub.UpsertBeds(pb.UpsertBedsRequest(hospital_id=hospital, wards=_changed(wards, _all_relied_on)),
                          metadata=manager)


async def _book_back_then(app, hospital: str, days_ago: int, nights: int) -> str:
    """An admission on B1 booked `days_ago` days ago for that day: its stay starts then."""
    back_then = datetime.now(calendar.LOCAL) - timedelta(days=days_ago)
    snap = referral(hospital, admission(required=("oxygen",), nights=nights),
                    dates=[calendar.local_date(back_then)])
    async with app.ctx.pool.acquire() as conn, conn.transaction():
        outcome = await allocate(conn, Scheduler(clock=lambda: back_then), snap, now=back_then)
    assert not outcome.waitlisted
    return outcome.booking_id


async def test_a_stay_only_in_the_past_relies_on_nothing_but_one_with_tonight_does(stack, app, stub, hospital):
    manager = stack.metadata(hospital, Role.BED_MANAGER)
    wards = _wards(hospital)
    await stub.UpsertBeds(pb.UpsertBedsRequest(hospital_id=hospital, wards=wards), metadata=manager)
    past = await _book_back_then(app, hospital, days_ago=10, nights=2)
    current = await _book_back_then(app, hospital, days_ago=1, nights=2)  # last night and tonight
    # Live bookings both (nobody marked them); only the stay that has tonight holds the ward.
    assert await app.ctx.pool.fetchval("SELECT count(*) FROM bookings WHERE booking_id = ANY($1::text[]) "
                                       "AND state IN ('TENTATIVE', 'CONFIRMED')", [past, current]) == 2
    changed = _changed(wards, _all_relied_on)
    await _refused(stub.UpsertBeds(pb.UpsertBedsRequest(hospital_id=hospital, wards=changed), metadata=manager),
                   "wards[1].department（科室，1个有效预约）", "wards[1].rooms[1].beds[0]（所在房间，1个有效预约）")
    await stub.CancelBooking(pb.CancelBookingRequest(name=f"bookings/{current}"),
                             metadata=stack.metadata(hospital, Role.REFERRAL_DESK))
    await stub.UpsertBeds(pb.UpsertBedsRequest(hospital_id=hospital, wards=changed), metadata=manager)
    board = {b.bed_id: b for b in (await stub.GetBedBoard(pb.GetBedBoardRequest(hospital_id=hospital),
                                                          metadata=manager)).beds}
    assert (board[f"{hospital}-B1"].room_id, board[f"{hospital}-B1"].department) == (f"{hospital}-R1b", "neurology")
