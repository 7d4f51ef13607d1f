"""Service side of the engine requests: two consultations, nothing to book, ward limits."""
from scheduling.v1 import events_pb2, scheduling_service_pb2 as pb
from referral.v1 import types_pb2 as rtypes
from services.common.auth import Role
from services.scheduling.adapters import repository as repo
from services.scheduling.domain import calendar
from services.scheduling.service_layer.allocation import Scheduler, reoptimise

from .conftest import admission, consultation, exam, referral, session, timedelta, today


async def test_two_consultations_are_booked_after_the_exam(stack, app, stub, hospital):
    day = today() + timedelta(days=1)
    desk = stack.metadata(hospital, Role.REFERRAL_DESK)
    await stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[
        session(f"{hospital}-S1", day, start="09:00", end="10:00"),
        session(f"{hospital}-S2", day, department="neurology", start="09:00", end="11:00")]), metadata=desk)
    await stub.PublishExamCapacity(pb.PublishExamCapacityRequest(
        hospital_id=hospital,
        channels=[pb.ExamChannel(channel_id=f"{hospital}-CT1", modality="CT", slot_minutes=15)],
        capacity=[pb.ExamDayCapacity(channel_id=f"{hospital}-CT1", date=_pd(day), start_time="08:00",
                                     end_time="09:00", reserved_places=4)]), metadata=desk)
    snap = referral(hospital, consultation(), consultation("neurology", need_id="n-neuro"), exam())
    result = await stub.AllocateReferral(pb.AllocateReferralRequest(referral=snap),
                                         metadata=stack.metadata("scheduler", Role.SERVICE))
    assert not result.waitlisted
    items = result.booking.items
    visits = sorted((i for i in items if i.kind == events_pb2.ITEM_KIND_CONSULTATION), key=lambda i: i.need_id)
    ct, = (i for i in items if i.kind == events_pb2.ITEM_KIND_EXAM)
    assert [(v.need_id, v.department) for v in visits] == [("n-consult", "cardiology"), ("n-neuro", "neurology")]
    assert all(ct.end_time.ToSeconds() <= v.start_time.ToSeconds() for v in visits)
    assert visits[0].start_time != visits[1].start_time


def _pd(d):
    from .conftest import pdate
    return pdate(d)


async def test_a_waitlisted_referral_whose_needs_became_covered_is_promoted(stack, app, events, hospital):
    # Waitlisted for its CT; the CT is now covered by a recognised prior result, so the
    # re-optimisation has nothing to book and must still promote it.
    need = exam()
    need.covered_by_prior_result = True
    need.covering_result_reference = "RIS-2024-001"
    snap = referral(hospital, need)
    now = calendar.at(today(), 600)
    async with app.ctx.pool.acquire() as conn, conn.transaction():
        await repo.save_referral(conn, referral_id=snap.referral_id, hospital_id=hospital,
                                 sending_institution_id=snap.sending_institution_id,
                                 snapshot=snap.SerializeToString(), accepted_at=now, state="WAITLISTED",
                                 reason_code="NO_EXAM_SLOT_BEFORE_DEADLINE", reason="无检查号源")
        promoted = await reoptimise(conn, Scheduler(), hospital, now=now)
    assert promoted == [snap.referral_id]
    scheduled, = await events.wait("ReferralScheduled", referral_id=snap.referral_id)
    assert scheduled.nothing_to_book and not scheduled.items and scheduled.trips == 0
    assert "互认" in scheduled.note


async def test_two_wards_of_one_department_keep_their_own_age_limits(stack, app, stub, hospital):
    beds_md = stack.metadata(hospital, Role.BED_MANAGER)

    def ward(suffix, **limits):
        return pb.Ward(ward_id=f"{hospital}-{suffix}", department="cardiology", name=suffix, **limits, rooms=[
            pb.WardRoom(room_id=f"{hospital}-{suffix}-R", label="1", capacity=1, gender_policy=pb.GENDER_POLICY_ANY,
                        beds=[pb.BedSpec(bed_id=f"{hospital}-{suffix}-B", label="1床")])])

    # The adult ward is listed first: before the fix it lent its limits to the children's.
    await stub.UpsertBeds(pb.UpsertBedsRequest(hospital_id=hospital, wards=[
        ward("ADULT", min_age=14), ward("CHILD", max_age=14)]), metadata=beds_md)
    service = stack.metadata("scheduler", Role.SERVICE)
    child = await stub.AllocateReferral(pb.AllocateReferralRequest(
        referral=referral(hospital, admission(nights=2), age=6, gender=rtypes.GENDER_MALE)), metadata=service)
    adult = await stub.AllocateReferral(pb.AllocateReferralRequest(
        referral=referral(hospital, admission(nights=2), age=50)), metadata=service)
    assert not child.waitlisted and not adult.waitlisted
    assert child.booking.items[0].ward == "CHILD" and adult.booking.items[0].ward == "ADULT"
