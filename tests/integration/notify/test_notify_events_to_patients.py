"""Each event type produces the right message on the right channel, and the clinic hears of it."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from notify.v1 import events_pb2 as notify_ev
from referral.v1 import events_pb2 as ref_ev
from scheduling.v1 import events_pb2 as sch_ev

from services.notify.domain.model import SHANGHAI

from .notify_support import Patient, Referral, eventually, new_openid, notify_service, publish, vendor_env


async def _clinic_updates(db, referral_id: str) -> list:
    rows = await db.fetch("SELECT payload FROM notify.outbox WHERE aggregate_id = $1 "
                          "AND event_type = 'notify.v1.ReferralUpdateForClinic' ORDER BY seq", referral_id)
    out = []
    from common.v1 import event_pb2
    for r in rows:
        env = event_pb2.EventEnvelope.FromString(r["payload"])
        update = notify_ev.ReferralUpdateForClinic()
        env.payload.Unpack(update)
        out.append(update)
    return out


async def test_referral_decisions_go_by_wechat_when_subscribed_else_sms(stack, monkeypatch, vendors, broker, db):
    wechat, aliyun, tencent = vendors
    subscribed = Referral(Patient(stack, openid=new_openid()))
    sms_only = Referral(Patient(stack))
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)):
        await publish(broker, subscribed.accepted(), subscribed)
        await publish(broker, ref_ev.ReferralReturned(referral=sms_only.snapshot(), reason="请补充心电图报告"), sms_only)
        await eventually(lambda: len(wechat.accepted) == 1 and len(aliyun.accepted) == 1)
        await publish(broker, ref_ev.ReferralRejected(referral=sms_only.snapshot(), reason="疑似恶性肿瘤，建议上级"),
                      sms_only)
        await eventually(lambda: len(aliyun.accepted) == 2)

    [w] = wechat.accepted
    assert w["openid"] == subscribed.patient.openid and w["template_id"] == "wx-tmpl-referral-status"
    assert w["data"]["phrase2"] == "已接收" and w["data"]["thing1"] == "心内科转诊申请"
    assert w["page"] == f"pages/referral/detail?id={subscribed.referral_id}"
    returned, rejected = aliyun.accepted
    assert returned["phone"] == sms_only.patient.mobile and returned["template_code"] == "SMS_470000102"
    assert rejected["template_code"] == "SMS_470000103" and rejected["params"] == {"dept": "心内科"}
    # The reasons are the doctors' words and may name a condition: never in a patient's message.
    assert all("心电图" not in str(r) and "肿瘤" not in str(r) for r in aliyun.accepted)
    assert tencent.accepted == []
    # The delivery id travels as OutId, the idempotency key of the vendor call.
    row = await db.fetchrow("SELECT d.id, d.status FROM notify.deliveries d JOIN notify.notifications n "
                            "ON n.id = d.notification_id WHERE n.referral_id = $1 AND n.template = $2",
                            sms_only.referral_id, "referral_returned")
    assert (str(row["id"]), row["status"]) == (returned["out_id"], "SENT")

    updates = await _clinic_updates(db, sms_only.referral_id)
    assert [u.kind for u in updates] == [notify_ev.CLINIC_UPDATE_KIND_RETURNED, notify_ev.CLINIC_UPDATE_KIND_REJECTED]
    assert all(u.clinic_id == sms_only.clinic_id and u.hospital_id == sms_only.hospital_id for u in updates)
    assert updates[0].reason == "请补充心电图报告" and updates[0].patient_notified


async def test_booking_tells_time_place_what_to_bring_and_preparation(stack, monkeypatch, vendors, broker, db):
    wechat, aliyun, tencent = vendors
    ref = Referral(Patient(stack))
    start = (datetime.now(SHANGHAI) + timedelta(days=3)).replace(hour=9, minute=30, second=0, microsecond=0)
    consult = ref.item(start, item_id="consult")
    exam = ref.item(start + timedelta(hours=1), kind=sch_ev.ITEM_KIND_EXAM, item_id="us", room="超声3室",
                    building="医技楼", floor="2楼")
    exam.modality, exam.preparation = "US", "检查前8小时禁食禁水"
    booking = ref.scheduled([consult, exam])
    async with notify_service(stack, monkeypatch, vendor_env(*vendors, vendor="tencent")):
        await publish(broker, ref.accepted(), ref)
        await publish(broker, booking, ref)
        await eventually(lambda: len(tencent.accepted) == 3)

    # The exam has its own template: a booking's items do not exhaust one template's daily cap.
    assert sorted(r["template_id"] for r in tencent.accepted) == ["2300101", "2300201", "2300205"]
    booked = [r for r in tencent.accepted if r["template_id"] in ("2300201", "2300205")]
    [second] = [b for b in booked if b["params"][4] == "超声3室"]
    [first] = [b for b in booked if b is not second]
    local = start
    date, time, hospital, place, room, bring, prep = second["params"]
    assert date == f"{local.month}月{local.day}日" and hospital == "县人民医院"
    assert (place, room, prep) == ("医技楼2楼", "超声3室", "检查前8小时禁食禁水")
    assert bring == "身份证医保卡既往检查结果"  # fitted to Tencent's 12-character variables
    assert first["params"][6] == "无需特殊准备"
    assert all(len(p) <= 12 for r in tencent.accepted for p in r["params"])
    texts = [r["text"] for r in await db.fetch(
        "SELECT text FROM notify.notifications WHERE referral_id = $1 "
        "AND template IN ('appointment_booked', 'exam_booked') ORDER BY part", ref.referral_id)]
    assert "请携带身份证、医保卡、既往检查结果" in texts[0] and "检查前8小时禁食禁水" in texts[1]
    reminders = await db.fetch(
        "SELECT n.template, n.part, d.status, d.due_at FROM notify.notifications n JOIN notify.deliveries d "
        "ON d.notification_id = n.id WHERE n.referral_id = $1 AND n.reminder ORDER BY d.due_at", ref.referral_id)
    assert sorted((r["template"], r["part"]) for r in reminders) == [
        ("exam_reminder_2h", "us"), ("exam_reminder_day_before", "us"), ("reminder_2h", "consult"),
        ("reminder_day_before", "consult")]
    assert all(r["status"] == "PENDING" for r in reminders)
    two_hours = [r["due_at"] for r in reminders if r["template"].endswith("reminder_2h")]
    assert sorted(two_hours) == [start - timedelta(hours=2), start - timedelta(hours=1)]
    [update] = [u for u in await _clinic_updates(db, ref.referral_id)
                if u.kind == notify_ev.CLINIC_UPDATE_KIND_SCHEDULED]
    assert update.appointment_time.ToDatetime(tzinfo=UTC) == start and "县人民医院" in update.place
