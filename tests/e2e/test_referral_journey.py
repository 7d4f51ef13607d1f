"""One patient through the whole consortium, with the three services as separate processes.

A township clinic refers a patient up with a CT it already has; the hospital accepts;
the scheduler books the consultation and the MRI (not the CT) in one trip; the patient
gets the WeChat message and then the reminder; arrives; the hospital completes with a
down-referral; the clinic accepts it; the patient is told where to follow up; the
clinic's watch stream saw every step; the consortium statistics count it.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from datetime import date, datetime, timedelta

from common.v1 import types_pb2 as common
from referral.v1 import referral_service_pb2 as api
from referral.v1 import types_pb2 as rtypes
from scheduling.v1 import events_pb2 as sev
from scheduling.v1 import scheduling_service_pb2 as sched
from benchmarks.demo.system import System, referral_id_of
from services.common.auth import Role
from services.scheduling.domain import calendar
from tests.integration.notify.notify_support import eventually, new_openid
from tests.integration.referral.world import new_world, pdate
from tests.unit.referral import fakes

S = rtypes.ReferralState
# From starting the processes to the reminder's due time: start-up plus the flow up to
# the booking (about 10 s here) with room to spare, so the reminder is planned, not expired.
REMINDER_LEAD_SECONDS = 20


def _at(day: date, hhmm: str) -> datetime:
    h, m = (int(x) for x in hhmm.split(":"))
    return datetime(day.year, day.month, day.day, h, m, tzinfo=calendar.LOCAL)


async def _publish_capacity(system: System, hospital: str, day: date) -> None:
    """One neurology slot at 09:00 and one MRI slot at 08:00 on `day`: the only placement
    is MRI then consultation, one trip, at times the test knows in advance."""
    desk = system.metadata(hospital, Role.REFERRAL_DESK)
    await system.scheduling.PublishSessions(sched.PublishSessionsRequest(
        hospital_id=hospital, hospital_name="测试县人民医院", sessions=[sched.OutpatientSession(
            session_id=f"{hospital}-NEUR-AM", department="neurology", doctor_id="D-NEUR-01", doctor_name="赵立新",
            title=sched.DOCTOR_TITLE_GENERAL, date=pdate(day), half_day=sched.HALF_DAY_AM, start_time="09:00",
            end_time="09:30", slot_minutes=30, total_places=4, reserved_places=2,
            place=sev.Place(building="门诊楼", floor="3层", room="神经内科2诊室"))]), metadata=desk)
    await system.scheduling.PublishExamCapacity(sched.PublishExamCapacityRequest(
        hospital_id=hospital, hospital_name="测试县人民医院",
        channels=[sched.ExamChannel(channel_id=f"{hospital}-MRI1", modality="MRI", device_id="MRI-1.5T",
                                    slot_minutes=30, place=sev.Place(building="医技楼", floor="1层", room="磁共振室"))],
        capacity=[sched.ExamDayCapacity(channel_id=f"{hospital}-MRI1", date=pdate(day), start_time="08:00",
                                        end_time="08:30", reserved_places=1)]), metadata=desk)


async def _watch(stub, metadata, seen: list) -> None:
    async for change in stub.WatchReferrals(api.WatchReferralsRequest(cursor=""), metadata=metadata):
        seen.append((change.referral.name, change.change_type, change.referral.state))


async def test_up_referral_to_down_referral_through_all_three_services(stack, system_dir):
    started = time.monotonic()
    marks = {}
    tag = uuid.uuid4().hex[:6].upper()
    hospital = f"H{tag}"
    day = calendar.local_date(datetime.now(calendar.LOCAL)) + timedelta(days=1)
    mri_at = _at(day, "08:00")
    before_minutes = (mri_at.timestamp() - time.time() - REMINDER_LEAD_SECONDS) / 60
    env = {"DATABASE_URL": stack.database_url, "NATS_URL": stack.nats_url,
           "SCHEDULING_HOSPITAL_SHARD": hospital, "SCHEDULING_RELEASE_POLL_SECONDS": "3600",
           "SCHEDULING_REOPTIMISE_SECONDS": "3600", "OUTBOX_POLL_SECONDS": "0.5",
           # The 2-hour reminder falls due inside the test; the evening-before one never does.
           "NOTIFY_REMINDER_BEFORE_MINUTES": f"{before_minutes:.4f}", "NOTIFY_REMINDER_DAY_BEFORE_AT": "00:00"}
    async with System(system_dir, env) as system:
        marks["started"] = time.monotonic() - started
        world = await new_world(stack, system.referral, tag)
        clinic = world.clinics[0]
        await _publish_capacity(system, hospital, day)
        watched: list = []
        watcher = asyncio.create_task(_watch(system.referral, world.md(clinic), watched))
        await asyncio.sleep(0.5)  # the watch starts "from now"

        # 1. The clinic refers the patient up, with the CT it already has (结果互认).
        openid = new_openid()
        request = world.request(clinic=clinic, needs=[
            rtypes.ResourceNeed(need_id="consult", consultation=rtypes.ConsultationNeed(department="neurology")),
            rtypes.ResourceNeed(need_id="ct", exam=rtypes.ExamNeed(modality="CT", body_part="head")),
            rtypes.ResourceNeed(need_id="mri", exam=rtypes.ExamNeed(modality="MRI", body_part="head"))],
            results=[api.PriorResult(exam_type="CT", body_part="head", result_date=pdate(day - timedelta(days=5)),
                                     institution_id=clinic, reference="CT-2024-0001", summary="合成数据")])
        del request.referral.available_dates[:]
        request.referral.available_dates.append(pdate(day))
        request.patient.CopyFrom(api.PatientInput(display_name="李测明", id_number=fakes.id_number(),
                                                  mobile=fakes.mobile(), wechat_openid=openid))
        up = await system.referral.CreateReferral(request, metadata=world.md(clinic))
        assert up.state == S.REFERRAL_STATE_SUBMITTED
        covered = {n.need_id: n.covered_by_prior_result for n in up.needs}
        assert covered == {"consult": False, "ct": True, "mri": False}

        # 2. The hospital accepts; 3. the scheduler books consultation and MRI in one trip.
        await world.call("AcceptReferral", hospital, up.name)

        async def scheduled():
            r = await system.referral.GetReferral(api.GetReferralRequest(name=up.name), metadata=world.md(clinic))
            return r if r.state == S.REFERRAL_STATE_SCHEDULED else None
        up = await eventually(scheduled, timeout=20)
        items = sorted(up.scheduled_items, key=lambda i: i.start_time.ToSeconds())
        assert [i.need_id for i in items] == ["mri", "consult"]
        assert items[0].start_time.ToDatetime().timestamp() == mri_at.timestamp()
        booking = await system.scheduling.GetBooking(sched.GetBookingRequest(name=f"bookings/{up.booking_id}"),
                                                     metadata=world.md(clinic))
        assert booking.trips == 1 and len(booking.items) == 2

        # 4. The patient is told by WeChat, then reminded before the MRI.
        def wechat(template: str, referral_name: str) -> list[dict]:
            rid = referral_name.split("/")[-1]
            return [m for m in system.wechat.accepted if m["openid"] == openid
                    and m["template_id"] == template and referral_id_of(m) == rid]
        booked = await eventually(lambda: len(wechat("wx-tmpl-appointment", up.name)) == 2 and
                                  wechat("wx-tmpl-appointment", up.name), timeout=15)
        assert {m["data"]["thing3"] for m in booked} == {"磁共振室", "神经内科2诊室"}
        reminder, = await eventually(lambda: wechat("wx-tmpl-reminder", up.name), timeout=REMINDER_LEAD_SECONDS + 15)
        assert reminder["t"] > max(m["t"] for m in booked)
        assert reminder["data"]["thing3"] == "磁共振室"
        assert not system.aliyun.accepted and not system.tencent.accepted  # WeChat subscribers get no SMS

        marks["reminded"] = time.monotonic() - started
        # 5. The patient arrives; 6. the hospital completes with a down-referral.
        await world.call("RecordArrival", hospital, up.name)
        follow_up = day + timedelta(days=14)
        done = await system.referral.CompleteReferral(api.CompleteReferralRequest(
            name=up.name, completion=api.Completion(findings="合成数据", treatment_summary="合成数据",
                                                    recommendations="社区康复"),
            down_referral=api.DownReferralProposal(
                care_plan="康复训练，每两周随访", follow_up_dates=[pdate(follow_up)],
                consent=api.Consent(given=True, method="签字"), purpose=rtypes.REFERRAL_PURPOSE_REHABILITATION)),
            metadata=world.md(hospital))
        assert done.state == S.REFERRAL_STATE_COMPLETED and done.completion.down_referral
        down_name = done.completion.down_referral

        # 7. The clinic accepts the down-referral; 8. the patient learns where to follow up.
        down = await world.call("AcceptReferral", clinic, down_name)
        assert down.direction == rtypes.DIRECTION_DOWN and down.state == S.REFERRAL_STATE_ACCEPTED
        told, = await eventually(lambda: wechat("wx-tmpl-down-referral", down_name), timeout=15)
        assert told["data"]["thing1"] == "测试乡镇卫生院0"
        assert told["data"]["thing2"] == f"首次随访{follow_up.month}月{follow_up.day}日"
        await asyncio.sleep(2)  # a wrongly scheduled down-referral would be waitlisted by now
        down = await system.referral.GetReferral(api.GetReferralRequest(name=down_name), metadata=world.md(clinic))
        assert down.state == S.REFERRAL_STATE_ACCEPTED, rtypes.ReferralState.Name(down.state)
        assert not wechat("wx-tmpl-referral-status", down_name)  # no "the hospital accepted" for a down-referral

        # 9. The clinic's watch stream saw every step, in order.
        def steps(name: str) -> list[int]:
            return [state for n, _, state in watched if n == name]
        await eventually(lambda: S.REFERRAL_STATE_ACCEPTED in steps(down_name), timeout=5)
        watcher.cancel()
        assert steps(up.name) == [S.REFERRAL_STATE_SUBMITTED, S.REFERRAL_STATE_ACCEPTED, S.REFERRAL_STATE_SCHEDULED,
                                  S.REFERRAL_STATE_ARRIVED, S.REFERRAL_STATE_COMPLETED]
        assert steps(down_name) == [S.REFERRAL_STATE_SUBMITTED, S.REFERRAL_STATE_ACCEPTED]

        # 10. The consortium office counts one up and one down.
        today = pdate(calendar.local_date(datetime.now(calendar.LOCAL)))
        stats = await system.referral.GetReferralStats(api.GetReferralStatsRequest(
            consortium=f"consortiums/{world.consortium}", start_date=today, end_date=today), metadata=world.office)
        assert (stats.up_count, stats.down_count) == (1, 1)
        assert stats.scheduling.count == 1 and stats.kept_inside_share == 1.0
        by_clinic = {c.key: (c.up_count, c.down_count) for c in stats.by_clinic}
        assert by_clinic[clinic] == (1, 1)
        marks["done"] = time.monotonic() - started
    marks["stopped"] = time.monotonic() - started
    print("\ne2e journey (s since start): " + ", ".join(f"{k} {v:.1f}" for k, v in marks.items()))
