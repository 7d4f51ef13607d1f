"""What live bookings' patients were told stays as told: republishing a booked session or
exam channel may not change its department, doctor, place or modality."""
import grpc
import pytest

from scheduling.v1 import events_pb2, scheduling_service_pb2 as pb
from services.common.auth import Role
from tests.support.rpc_errors import reason

from .conftest import exam, pdate, referral, session, timedelta, today


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
