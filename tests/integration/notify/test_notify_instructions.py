"""What to bring and how to prepare reach the patient whole, whatever a vendor's length
limit: a message keeps what fits and points to the instructions message ("就诊须知"), which
carries the rest in pieces, once per event and day; and a booking of several items stays
within the per-template and per-number daily SMS caps, booked the day before the visit too."""
from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict

import grpc

from notify.v1 import notify_service_pb2 as pb
from notify.v1 import notify_service_pb2_grpc as pb_grpc
from referral.v1 import events_pb2 as ref_ev
from scheduling.v1 import events_pb2 as sch_ev
from services.common.auth import Role
from services.notify.domain.model import SHANGHAI

from .notify_support import (
    AdjustableClock, Patient, Referral, eventually, local, new_openid, notify_service, publish, vendor_env)

# As scheduling words them (services/scheduling/domain/preparation.py).
BRING = "身份证、医保卡、转诊单及既往检查结果"
CONSULT_PREP = "请提前30分钟到门诊服务台凭转诊单报到"
CT_PREP = "检查前4小时禁食；增强CT需携带近30天内肾功能结果"
MRI_PREP = "请勿携带金属物品"
US_PREP = "检查前8小时禁食禁水"
# How a message ends an instruction it cannot hold whole: the patient reads it in the 就诊须知.
POINTER = "…见须知"
TENCENT = {"booked": "2300201", "exam_booked": "2300205", "instructions": "2300701", "accepted": "2300101"}


def _booking(ref: Referral, day: int, *, month: int = 3, booking_id: str = "") -> sch_ev.ReferralScheduled:
    consult = ref.item(local(2034, month, day, 8, 0), item_id="consult")
    consult.preparation = CONSULT_PREP
    exams = []
    for hour, item_id, room, modality, prep in ((9, "ct", "CT室", "CT", CT_PREP), (10, "mri", "磁共振室", "MRI", MRI_PREP),
                                                (11, "us", "超声3室", "US", US_PREP)):
        exam = ref.item(local(2034, month, day, hour, 0), kind=sch_ev.ITEM_KIND_EXAM, item_id=item_id, room=room,
                        building="医技楼", floor="1楼")
        exam.modality, exam.preparation = modality, prep
        exams.append(exam)
    return ref.scheduled([consult, *exams], booking_id=booking_id, bring=BRING)


def _instructions_text(accepted: list[dict]) -> str:
    """The instructions SMS (Tencent: index, then the pieces) read in their order."""
    sent = sorted((r["params"] for r in accepted if r["template_id"] == TENCENT["instructions"]), key=lambda p: p[0])
    return "".join("".join(params[1:]) for params in sent)


async def _planned(db, referral_id: str) -> list:
    return await db.fetch(
        "SELECT n.template, n.part, n.covers, n.params, d.status, d.status_reason, d.due_at, d.sent_at "
        "FROM notify.notifications n JOIN notify.deliveries d ON d.notification_id = n.id "
        "WHERE n.referral_id = $1 ORDER BY d.due_at, n.template, n.part", referral_id)


async def _planned_by(db, event_id: str) -> bool:
    return await db.fetchval("SELECT count(*) > 0 FROM notify.notifications WHERE event_id = $1", event_id)


async def _nothing_due_waits(db, referral_id: str, clock) -> bool:
    return not [r for r in await _planned(db, referral_id)
                if r["due_at"] <= clock() and r["status"] in ("PENDING", "SENDING")]


async def _due_sent(db, referral_id: str, clock) -> bool:
    rows = await _planned(db, referral_id)
    return bool(rows) and all(r["status"] == "SENT" for r in rows if r["due_at"] <= clock())


async def test_a_long_instruction_reaches_the_patient_whole_and_the_booking_stays_within_the_caps(
        stack, monkeypatch, vendors, broker, db):
    _, _, tencent = vendors
    clock = AdjustableClock(local(2034, 3, 1, 10, 0))
    ref = Referral(Patient(stack))
    booking = _booking(ref, 10)
    # Tencent's 12-character variables, and the per-number caps of production but the hour's.
    env = {**vendor_env(*vendors, vendor="tencent"), "NOTIFY_SMS_SAME_TEMPLATE_PER_DAY": "3"}
    async with notify_service(stack, monkeypatch, env, clock=clock):
        await publish(broker, ref.accepted(), ref)
        event_id = await publish(broker, booking, ref)
        await eventually(lambda: len(tencent.accepted) == 7)
        await eventually(lambda: _due_sent(db, ref.referral_id, clock))
        sent = len(tencent.accepted)
        planned = len(await _planned(db, ref.referral_id))
        # The booking again, past JetStream's duplicate window: no second instructions message.
        await publish(broker, booking, ref, event_id=event_id, msg_id=event_id + "-again")
        await eventually(lambda: db.fetchval("SELECT count(*) = 1 FROM notify.inbox WHERE event_id = $1", event_id))
        await asyncio.sleep(1.0)
        assert (len(tencent.accepted), len(await _planned(db, ref.referral_id))) == (sent, planned)

    templates = Counter(r["template_id"] for r in tencent.accepted)
    assert templates == {TENCENT["accepted"]: 1, TENCENT["booked"]: 1, TENCENT["exam_booked"]: 3,
                         TENCENT["instructions"]: 2}
    assert all(len(p) <= 12 for r in tencent.accepted for p in r["params"])
    # The announcements keep what fits of a long instruction and say where the rest is.
    consult = next(r["params"] for r in tencent.accepted if r["template_id"] == TENCENT["booked"])
    assert consult[5] == "身份证医保卡转诊" + POINTER and consult[6] == "请提前30分钟到" + POINTER
    us = next(r["params"] for r in tencent.accepted
              if r["template_id"] == TENCENT["exam_booked"] and r["params"][4] == "超声3室")
    assert us[6] == US_PREP  # it fits: whole, no pointer
    # The instructions message carries every instruction that was cut, each once and whole.
    whole = _instructions_text(tencent.accepted)
    assert whole == (f"请携带{BRING}；心内科2诊室：{CONSULT_PREP}；CT室：{CT_PREP}")
    assert all(r["phone"] == ref.patient.mobile for r in tencent.accepted)

    # Every day of the booking, no template goes to the number more than the cap allows, and a
    # day whose reminders point to the instructions message has its own.
    rows = await _planned(db, ref.referral_id)
    assert not [r for r in rows if r["status_reason"] == "per-number cap"]
    per_day = Counter((r["template"], r["due_at"].astimezone(SHANGHAI).date()) for r in rows)
    assert max(per_day.values()) <= 3
    instructions = Counter((str(r["due_at"].astimezone(SHANGHAI).date()), tuple(r["covers"]), r["status"])
                           for r in rows if r["template"] == "instructions")
    everything = ("consult", "ct", "mri", "us")  # every item's message was told to bring BRING
    assert instructions == {("2034-03-01", everything, "SENT"): 2,
                            ("2034-03-09", everything, "PENDING"): 2,  # with the evening-before reminders
                            ("2034-03-10", ("consult", "ct"), "PENDING"): 1}  # with the 2-hour ones


async def test_a_booking_made_the_day_before_the_visit_stays_within_the_daily_cap_and_loses_no_message(
        stack, monkeypatch, vendors, broker, db):
    _, _, tencent = vendors
    clock = AdjustableClock(local(2034, 7, 9, 9, 0))
    ref = Referral(Patient(stack))
    # The production's daily caps, per number and per template; not the hour's or the spacing,
    # which only delay a send within the day.
    env = {**vendor_env(*vendors, vendor="tencent"), "NOTIFY_SMS_PER_DAY": "8",
           "NOTIFY_SMS_SAME_TEMPLATE_PER_DAY": "3"}
    async with notify_service(stack, monkeypatch, env, clock=clock):
        await publish(broker, ref.accepted(), ref)
        await eventually(lambda: len(tencent.accepted) == 1)
        clock.set_local(local(2034, 7, 9, 10, 0))
        booked_id = await publish(broker, _booking(ref, 10, month=7), ref)
        await eventually(lambda: _planned_by(db, booked_id))
        await eventually(lambda: _due_sent(db, ref.referral_id, clock))
        # The evening of the booking day, then each of the visit day's 2-hour reminders (from
        # 06:00, an hour apart; each expires when its item begins).
        for moment in (local(2034, 7, 9, 18, 1), *(local(2034, 7, 10, hour, 1) for hour in (6, 7, 8, 9))):
            clock.set_local(moment)
            await eventually(lambda: _nothing_due_waits(db, ref.referral_id, clock))
        rows = await _planned(db, ref.referral_id)

    # Every message planned went out: none held by the cap past its expiry, none waits.
    assert [(r["template"], r["part"], r["status"], r["status_reason"]) for r in rows
            if r["status"] != "SENT"] == []
    assert len(tencent.accepted) == len(rows)
    sent_on = Counter(str(r["sent_at"].astimezone(SHANGHAI).date()) for r in rows)
    assert sent_on == {"2034-07-09": 7, "2034-07-10": 5}
    by_day = defaultdict(Counter)
    for r in rows:
        by_day[str(r["sent_at"].astimezone(SHANGHAI).date())][r["template"]] += 1
    # Told of the items that day, the patient has no evening reminder of them; the 2-hour
    # reminders and their instructions come on the day.
    assert by_day == {
        "2034-07-09": {"referral_accepted": 1, "appointment_booked": 1, "exam_booked": 3, "instructions": 2},
        "2034-07-10": {"reminder_2h": 1, "exam_reminder_2h": 3, "instructions": 1}}


async def test_on_wechat_a_field_too_short_points_to_the_instructions_which_fall_back_to_sms_if_refused(
        stack, monkeypatch, vendors, broker, db):
    wechat, aliyun, _ = vendors
    clock = AdjustableClock(local(2034, 5, 1, 10, 0))
    subscribed, refusing = Referral(Patient(stack, openid=new_openid())), Referral(Patient(stack, openid=new_openid()))
    # A subscriber who never accepted the instructions template: WeChat refuses it (43101).
    wechat.refused_templates.add((refusing.patient.openid, "wx-tmpl-instructions"))
    async with notify_service(stack, monkeypatch, vendor_env(*vendors), clock=clock):
        for ref in (subscribed, refusing):
            exam = ref.item(local(2034, 5, 3, 9, 0), kind=sch_ev.ITEM_KIND_EXAM, item_id="ct", room="CT室")
            exam.modality, exam.preparation = "CT", CT_PREP
            await publish(broker, ref.accepted(), ref)
            await publish(broker, ref.scheduled([exam], bring=BRING), ref)
        await eventually(lambda: len(wechat.accepted) == 5 and len(aliyun.accepted) == 1)

    def to(ref, template):
        return [m for m in wechat.accepted if m["openid"] == ref.patient.openid and m["template_id"] == template]
    [booked] = to(subscribed, "wx-tmpl-appointment")
    assert booked["data"]["thing5"] == CT_PREP.replace("；", "")[:16] + POINTER
    [instructions] = to(subscribed, "wx-tmpl-instructions")
    assert "".join(instructions["data"][f"thing{i}"] for i in range(1, 6)) == f"CT室：{CT_PREP}"
    assert instructions["page"] == f"pages/referral/detail?id={subscribed.referral_id}"
    assert to(refusing, "wx-tmpl-appointment") and not to(refusing, "wx-tmpl-instructions")
    [by_sms] = aliyun.accepted
    assert by_sms["phone"] == refusing.patient.mobile and by_sms["template_code"] == "SMS_470000701"
    assert "".join(by_sms["params"][f"piece{i}"] for i in range(1, 6)) == f"CT室：{CT_PREP}"


async def test_a_moved_item_s_waiting_instructions_are_planned_again_for_the_messages_that_stay(
        stack, monkeypatch, vendors, broker, db):
    _, _, tencent = vendors
    clock = AdjustableClock(local(2034, 4, 1, 10, 0))
    ref = Referral(Patient(stack))
    booking = _booking(ref, 10, month=4, booking_id="BK" + ref.referral_id)
    env = vendor_env(*vendors, vendor="tencent")
    async with notify_service(stack, monkeypatch, env, clock=clock):
        await publish(broker, ref.accepted(), ref)
        await publish(broker, booking, ref)
        await eventually(lambda: len(tencent.accepted) == 7)
        # The CT moves to another day; the consultation and the other exams, whose reminders
        # point to the instructions of the 9th and the 10th, stay: those instructions, which
        # carry the CT's too, make way for ones without it.
        items = list(booking.items)
        ct = ref.item(local(2034, 4, 12, 9, 0), kind=sch_ev.ITEM_KIND_EXAM, item_id="ct", room="CT室",
                      building="医技楼", floor="1楼")
        ct.modality, ct.preparation = "CT", CT_PREP
        moved = sch_ev.BookingRescheduled(referral_id=ref.referral_id, booking_id=booking.booking_id,
                                          hospital_id=ref.hospital_id, sending_institution_id=ref.clinic_id,
                                          items=[items[0], ct, *items[2:]], previous_items=items, reason="设备检修")
        await publish(broker, moved, ref)
        await eventually(lambda: len(tencent.accepted) == 9)
        await eventually(lambda: _due_sent(db, ref.referral_id, clock))
        rows = await _planned(db, ref.referral_id)

        def later(status):
            return sorted((str(r["due_at"].astimezone(SHANGHAI).date()), tuple(r["covers"])) for r in rows
                          if r["template"] == "instructions" and r["status"] == status)
        everything = ("consult", "ct", "mri", "us")
        assert later("PENDING") == [("2034-04-09", ("consult", "mri", "us")), ("2034-04-10", ("consult",)),
                                    ("2034-04-11", ("ct",)), ("2034-04-12", ("ct",))]
        assert later("CANCELLED") == [("2034-04-09", everything), ("2034-04-09", everything),
                                      ("2034-04-10", ("consult", "ct"))]
        waiting = defaultdict(list)
        for r in rows:
            if r["template"] == "instructions" and r["status"] == "PENDING":
                params = json.loads(r["params"])
                waiting[str(r["due_at"].astimezone(SHANGHAI).date())].append(
                    (params["index"], "".join(params[f"piece{i}"] for i in range(1, 6))))
        assert {day: "".join(piece for _, piece in sorted(pieces)) for day, pieces in waiting.items()} == {
            "2034-04-09": f"请携带{BRING}；心内科2诊室：{CONSULT_PREP}",
            "2034-04-10": f"心内科2诊室：{CONSULT_PREP}",
            "2034-04-11": f"请携带{BRING}；CT室：{CT_PREP}", "2034-04-12": f"CT室：{CT_PREP}"}
        # The booking's instructions went out; the CT's change came with its own.
        assert later("SENT") == [("2034-04-01", everything), ("2034-04-01", everything), ("2034-04-01", ("ct",))]
        assert _instructions_text(tencent.accepted[7:]) == f"请携带{BRING}；CT室：{CT_PREP}"
        await publish(broker, sch_ev.BookingCancelled(referral_id=ref.referral_id, booking_id=booking.booking_id,
                                                      hospital_id=ref.hospital_id, reason="患者改期"), ref)
        await eventually(lambda: len(tencent.accepted) == 10)
        await eventually(lambda: _due_sent(db, ref.referral_id, clock))
    # Nothing of the booking waits any more: the messages pointing to them went with them.
    assert {r["status"] for r in await _planned(db, ref.referral_id) if r["due_at"] > clock()} == {"CANCELLED"}


async def test_a_desk_note_longer_than_the_sms_variable_goes_whole_in_the_instructions(
        stack, monkeypatch, vendors, broker, db):
    _, _, tencent = vendors
    ref = Referral(Patient(stack))
    note = "明早请先到一楼服务台领取检查申请单"
    async with notify_service(stack, monkeypatch, vendor_env(*vendors, vendor="tencent")) as (app, _):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.NotifyServiceStub(channel)
            await publish(broker, ref_ev.ReferralSubmitted(referral=ref.snapshot()), ref)
            await eventually(lambda: db.fetchval("SELECT count(*) = 1 FROM notify.referral_routes "
                                                 "WHERE referral_id = $1", ref.referral_id))
            reply = await stub.SendStaffMessage(pb.SendStaffMessageRequest(
                referral_id=ref.referral_id, note=note, request_id="note-1"),
                metadata=stack.metadata(ref.hospital_id, Role.REFERRAL_DESK))
            await eventually(lambda: len(tencent.accepted) == 2)
    assert reply.text == f"转诊服务台提醒您：{note}"
    [staff] = [r["params"] for r in tencent.accepted if r["template_id"] == "2300601"]
    assert staff == ["明早请先到一楼服" + POINTER]
    assert _instructions_text(tencent.accepted) == note


async def test_an_exam_moved_to_another_room_replaces_the_waiting_instructions_of_its_booking(
        stack, monkeypatch, vendors, broker, db):
    _, _, tencent = vendors
    # Booked at night (quiet hours from 21:00): the booking's messages and their instructions
    # wait for the morning, when the MRI has already moved to another room.
    clock = AdjustableClock(local(2034, 6, 1, 22, 0))
    ref = Referral(Patient(stack))
    mri_prep = "请勿携带金属物品；体内有心脏起搏器者请提前告知"

    def exams(mri_room: str) -> list:
        out = []
        for hour, item_id, room, modality, prep in ((9, "ct", "CT室", "CT", CT_PREP),
                                                    (10, "mri", mri_room, "MRI", mri_prep)):
            exam = ref.item(local(2034, 6, 10, hour, 0), kind=sch_ev.ITEM_KIND_EXAM, item_id=item_id, room=room,
                            building="医技楼", floor="1楼")
            exam.modality, exam.preparation = modality, prep
            out.append(exam)
        return out

    booking = ref.scheduled(exams("磁共振室"), booking_id="BK" + ref.referral_id, bring=BRING)
    env = {**vendor_env(*vendors, vendor="tencent"), "QUIET_HOURS": "21:00-08:00"}

    async def instructions() -> list:
        return await db.fetch(
            "SELECT n.event_id, n.part, n.covers, d.status FROM notify.notifications n "
            "JOIN notify.deliveries d ON d.notification_id = n.id "
            "WHERE n.referral_id = $1 AND n.template = 'instructions' AND d.status <> 'CANCELLED' "
            "ORDER BY n.part", ref.referral_id)

    async with notify_service(stack, monkeypatch, env, clock=clock):
        await publish(broker, ref.accepted(), ref)
        booked_id = await publish(broker, booking, ref)
        await eventually(lambda: _planned_by(db, booked_id))
        clock.set_local(local(2034, 6, 1, 22, 30))
        moved = sch_ev.BookingRescheduled(referral_id=ref.referral_id, booking_id=booking.booking_id,
                                          hospital_id=ref.hospital_id, sending_institution_id=ref.clinic_id,
                                          items=exams("磁共振2室"), previous_items=booking.items,
                                          reason="设备检修")
        moved_id = await publish(broker, moved, ref)
        await eventually(lambda: _planned_by(db, moved_id))
        planned = await instructions()
        # Redelivered past JetStream's duplicate window, the reschedule plans nothing again.
        await publish(broker, moved, ref, event_id=moved_id, msg_id=moved_id + "-again")
        await eventually(lambda: db.fetchval("SELECT count(*) = 1 FROM notify.inbox WHERE event_id = $1", moved_id))
        await asyncio.sleep(1.0)
        assert await instructions() == planned
        clock.set_local(local(2034, 6, 2, 8, 1))
        await eventually(lambda: _nothing_due_waits(db, ref.referral_id, clock))

    # Each day has one instructions message (in pieces of one event), covering the kept CT's
    # messages as well as the moved MRI's.
    by_day: dict[str, set] = {}
    for row in await instructions():
        by_day.setdefault(row["part"].split("#")[0], set()).add((str(row["event_id"]), tuple(row["covers"])))
    assert by_day == {day: {(moved_id, ("ct", "mri"))} for day in ("2034-06-02", "2034-06-09", "2034-06-10")}
    # The one that went out in the morning names the MRI's new room and still the CT's preparation.
    assert _instructions_text(tencent.accepted) == f"请携带{BRING}；CT室：{CT_PREP}；磁共振2室：{mri_prep}"
