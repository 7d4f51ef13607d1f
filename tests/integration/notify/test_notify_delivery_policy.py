"""Fallback, retry and no-retry, quiet hours, per-number caps, opt-out and consent."""
from __future__ import annotations

import asyncio

from notify.v1 import events_pb2 as notify_ev
from referral.v1 import events_pb2 as ref_ev
from scheduling.v1 import events_pb2 as sch_ev
from services.notify.adapters.channels import AliyunSmsChannel
from services.notify.domain.model import SHANGHAI
from tests.fakes import HTTP_503

from .notify_support import (
    AdjustableClock,
    Patient,
    Referral,
    eventually,
    local,
    new_openid,
    notify_service,
    publish,
    vendor_env,
)


async def _deliveries(db, referral_id: str, template: str | None = None) -> list:
    return await db.fetch(
        "SELECT d.* FROM notify.deliveries d JOIN notify.notifications n ON n.id = d.notification_id "
        "WHERE n.referral_id = $1 AND ($2::text IS NULL OR n.template = $2) ORDER BY d.created_at, d.id",
        referral_id, template)


async def test_wechat_refusal_falls_back_to_sms_and_later_messages_skip_wechat(stack, monkeypatch, vendors, broker, db):
    wechat, aliyun, _ = vendors
    ref = Referral(Patient(stack, openid=new_openid()))
    wechat.refused.add(ref.patient.openid)
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)):
        await publish(broker, ref.accepted(), ref)
        await eventually(lambda: len(aliyun.accepted) == 1)
        await publish(broker, ref_ev.ReferralCancelled(referral=ref.snapshot(), reason="患者要求"), ref)
        await eventually(lambda: len(aliyun.accepted) == 2)
    assert wechat.accepted == [] and wechat.rejected == [("43101", "user refuse to accept the msg")]
    first = await _deliveries(db, ref.referral_id, "referral_accepted")
    assert [(d["channel"], d["status"], d["vendor_code"]) for d in first] == [
        ("wechat", "FELL_BACK", "43101"), ("sms", "SENT", "OK")]
    # The refusal is remembered: the next message goes straight to SMS.
    second = await _deliveries(db, ref.referral_id, "referral_cancelled")
    assert [(d["channel"], d["status"]) for d in second] == [("sms", "SENT")]


async def test_retryable_failures_retry_with_backoff_until_sent(stack, monkeypatch, vendors, broker, db):
    wechat, aliyun, tencent = vendors
    ref = Referral(Patient(stack))
    aliyun.fail_next("isp.SYSTEM_ERROR", 1, "系统繁忙")
    aliyun.fail_next(HTTP_503, 1)
    aliyun.fail_next("isv.BUSINESS_LIMIT_CONTROL", 1, "触发号码分钟级流控")
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)):
        await publish(broker, ref.accepted(), ref)
        await eventually(lambda: len(aliyun.accepted) == 1, timeout=15)

        async def recorded_sent():
            rows = await _deliveries(db, ref.referral_id)
            return rows if rows and rows[0]["status"] == "SENT" else None

        # The vendor answers before the service records its answer: wait for the record.
        [d] = await eventually(recorded_sent, timeout=10)
    assert (d["status"], d["attempts"], d["vendor_code"]) == ("SENT", 4, "OK")
    assert aliyun.request_count == 4


async def test_permanent_failure_is_recorded_not_retried_and_the_clinic_is_told(stack, monkeypatch, vendors, broker, db):
    _, aliyun, _ = vendors
    ref = Referral(Patient(stack, mobile="13900000000"))  # on the fake's block list
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)):
        await publish(broker, ref.accepted(), ref)
        await eventually(lambda: aliyun.rejected)
        await eventually(lambda: _deliveries(db, ref.referral_id), timeout=5)
        await asyncio.sleep(1.0)  # several dispatcher polls: nothing more may happen
        [d] = await _deliveries(db, ref.referral_id)
    assert (d["status"], d["attempts"], d["vendor_code"]) == ("FAILED", 1, "isv.BLACK_KEY_CONTROL_LIMIT")
    assert aliyun.request_count == 1 and aliyun.accepted == []
    failed = await db.fetchval("SELECT count(*) FROM notify.outbox WHERE aggregate_id = $1 "
                               "AND event_type = 'notify.v1.PatientNotificationFailed'", ref.referral_id)
    assert failed == 1


async def _failure_events(db, referral_id) -> int:
    return await db.fetchval("SELECT count(*) FROM notify.outbox WHERE aggregate_id = $1 "
                             "AND event_type = 'notify.v1.PatientNotificationFailed'", referral_id)


async def test_a_send_that_raises_every_time_fails_after_the_maximum_attempts(stack, monkeypatch, vendors, broker, db):
    ref = Referral(Patient(stack))
    sends = []

    async def broken(self, message):
        sends.append(message.correlation_id)
        raise ValueError("vendor answer the client cannot read")

    monkeypatch.setattr(AliyunSmsChannel, "send", broken)
    env = {**vendor_env(*vendors), "NOTIFY_MAX_ATTEMPTS": "3"}
    async with notify_service(stack, monkeypatch, env):
        await publish(broker, ref.accepted(), ref)
        [d] = await eventually(lambda: _failed(db, ref.referral_id), timeout=15)
        await asyncio.sleep(1.0)  # several dispatcher polls: nothing more may happen
    assert (d["attempts"], d["vendor_code"]) == (3, "ERROR") and len(sends) == 3
    assert await _failure_events(db, ref.referral_id) == 1


async def test_a_delivery_whose_senders_all_died_is_given_up_without_another_send(stack, monkeypatch, vendors,
                                                                                 broker, db):
    _, aliyun, _ = vendors
    ref = Referral(Patient(stack))
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)):  # NOTIFY_MAX_ATTEMPTS 5
        await publish(broker, ref.accepted(), ref)
        [sent] = await eventually(lambda: _in_status(db, ref.referral_id, "SENT"))
        # As the row stands after five claims whose senders died mid-call, the last lease lapsed.
        await db.execute("UPDATE notify.deliveries SET status = 'SENDING', attempts = 5, "
                         "lease_until = now() - interval '1 second' WHERE id = $1", sent["id"])
        [d] = await eventually(lambda: _failed(db, ref.referral_id))
    assert (d["attempts"], d["vendor_code"]) == (6, "NO_OUTCOME")
    assert len(aliyun.accepted) == 1
    assert await _failure_events(db, ref.referral_id) == 1


async def test_a_message_its_template_no_longer_renders_fails_at_once_and_an_older_version_goes_out_as_recorded(
        stack, monkeypatch, vendors, broker, db):
    _, aliyun, _ = vendors
    clock = AdjustableClock(local(2030, 3, 5, 22, 30))
    stale = Referral(Patient(stack))
    older = Referral(Patient(stack))
    env = {**vendor_env(*vendors), "QUIET_HOURS": "21:00-08:00"}
    async with notify_service(stack, monkeypatch, env, clock=clock):
        await publish(broker, stale.accepted(), stale)
        await publish(broker, older.accepted(), older)
        await eventually(lambda: _held(db, stale.referral_id, older.referral_id))
        # Planned under an earlier version of the template: one lacks a value the current one
        # needs, the other rendered an older text.
        await db.execute("UPDATE notify.notifications SET params = '{}' WHERE referral_id = $1", stale.referral_id)
        await db.execute("UPDATE notify.notifications SET template_version = 0, text = '旧版本的文字' "
                         "WHERE referral_id = $1", older.referral_id)
        clock.set_local(local(2030, 3, 6, 8, 1))
        [d] = await eventually(lambda: _failed(db, stale.referral_id))
        await eventually(lambda: len(aliyun.accepted) == 1)
    assert (d["attempts"], d["vendor_code"]) == (1, "TEMPLATE")
    assert await _failure_events(db, stale.referral_id) == 1
    assert aliyun.accepted[0]["phone"] == older.patient.mobile
    recorded = await db.fetchrow("SELECT template_version, text FROM notify.notifications WHERE referral_id = $1",
                                 older.referral_id)
    assert recorded["template_version"] == 1 and recorded["text"].startswith("您的心内科转诊申请已被医院接收")


async def _held(db, *referral_ids):
    rows = [d for r in referral_ids for d in await _deliveries(db, r)]
    return len(rows) == len(referral_ids) and all(d["status"] == "PENDING" for d in rows)


async def test_unapproved_template_on_tencent_is_permanent(stack, monkeypatch, vendors, broker, db):
    _, _, tencent = vendors
    tencent.templates.pop("2300101")
    ref = Referral(Patient(stack))
    async with notify_service(stack, monkeypatch, vendor_env(*vendors, vendor="tencent")):
        await publish(broker, ref.accepted(), ref)
        await eventually(lambda: tencent.rejected)
        rows = await eventually(lambda: _failed(db, ref.referral_id))
    assert rows[0]["vendor_code"] == "FailedOperation.TemplateIncorrectOrUnapproved" and rows[0]["attempts"] == 1


async def _failed(db, referral_id):
    return await _in_status(db, referral_id, "FAILED")


async def _in_status(db, referral_id, status):
    return [d for d in await _deliveries(db, referral_id) if d["status"] == status]


async def test_quiet_hours_hold_routine_messages_but_not_urgent_ones(stack, monkeypatch, vendors, broker, db):
    wechat, aliyun, _ = vendors
    clock = AdjustableClock()
    night = local(2030, 3, 5, 22, 30)
    clock.set_local(night)
    routine = Referral(Patient(stack))
    urgent = Referral(Patient(stack), urgent=True)
    env = {**vendor_env(*vendors), "QUIET_HOURS": "21:00-08:00"}
    async with notify_service(stack, monkeypatch, env, clock=clock):
        await publish(broker, routine.accepted(), routine)
        await publish(broker, urgent.accepted(), urgent)
        await eventually(lambda: len(aliyun.accepted) == 1)
        [held] = await eventually(lambda: _deliveries(db, routine.referral_id))
        assert held["status"] == "PENDING"
        assert held["due_at"] == local(2030, 3, 6, 8, 0)
        assert aliyun.accepted[0]["phone"] == urgent.patient.mobile
        clock.set_local(local(2030, 3, 6, 8, 1))
        await eventually(lambda: len(aliyun.accepted) == 2)
    assert aliyun.accepted[1]["phone"] == routine.patient.mobile


async def test_same_template_cap_defers_to_the_next_day(stack, monkeypatch, vendors, broker, db):
    _, aliyun, _ = vendors
    ref = Referral(Patient(stack))
    env = {**vendor_env(*vendors), "NOTIFY_SMS_SAME_TEMPLATE_PER_DAY": "1"}
    async with notify_service(stack, monkeypatch, env):
        await publish(broker, ref.accepted(), ref)
        await eventually(lambda: len(aliyun.accepted) == 1)
        # The same template again the same day (a second acceptance, e.g. after a return).
        await publish(broker, ref.accepted(), ref)
        rows = await eventually(lambda: _deferred(db, ref.referral_id))
    tomorrow = rows[0]["due_at"].astimezone(SHANGHAI)
    assert (tomorrow.hour, tomorrow.minute) == (0, 0) and rows[0]["status_reason"] == "per-number cap"
    assert len(aliyun.accepted) == 1


async def _deferred(db, referral_id):
    return [d for d in await _deliveries(db, referral_id) if d["status"] == "PENDING" and d["status_reason"]]


async def test_opt_out_skips_reminders_and_no_consent_skips_everything(stack, monkeypatch, vendors, broker, db):
    _, aliyun, _ = vendors
    ref = Referral(Patient(stack))
    silent = Referral(Patient(stack))
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)):
        await publish(broker, ref_ev.ReferralSubmitted(referral=ref.snapshot()), ref)
        await publish(broker, ref_ev.ReferralSubmitted(referral=silent.snapshot()), silent)
        await eventually(lambda: _route_known(db, ref.referral_id, silent.referral_id))
        await db.execute("UPDATE notify.contacts SET opt_out_non_essential = true WHERE patient_id = $1",
                         ref.patient.patient_id)
        await db.execute("UPDATE notify.contacts SET consent = false WHERE patient_id = $1", silent.patient.patient_id)
        start = local(2031, 1, 10, 10, 0)
        await publish(broker, ref.scheduled([ref.item(start, item_id="x")]), ref)
        await publish(broker, silent.accepted(), silent)
        await eventually(lambda: len(aliyun.accepted) == 1)
        skipped = await eventually(lambda: _skips(db, silent.referral_id))
    rows = await db.fetch("SELECT template, skip_reason FROM notify.notifications WHERE referral_id = $1 "
                          "ORDER BY template", ref.referral_id)
    assert [(r["template"], r["skip_reason"]) for r in rows] == [
        ("appointment_booked", None), ("reminder_2h", "OPTED_OUT"), ("reminder_day_before", "OPTED_OUT")]
    assert skipped == ["NO_CONSENT"]
    updates = await db.fetch("SELECT payload FROM notify.outbox WHERE aggregate_id = $1", silent.referral_id)
    assert len(updates) == 1  # the clinic still hears of it (patient_notified = false)


async def _route_known(db, *ids):
    return await db.fetchval("SELECT count(*) FROM notify.referral_routes WHERE referral_id = ANY($1)", list(ids)) == len(ids)


async def _skips(db, referral_id):
    return [r["skip_reason"] for r in await db.fetch(
        "SELECT skip_reason FROM notify.notifications WHERE referral_id = $1", referral_id)]


async def test_bed_ready_is_urgent_and_says_where_and_by_when(stack, monkeypatch, vendors, broker, db):
    wechat, _, _ = vendors
    clock = AdjustableClock(local(2030, 4, 1, 23, 0))
    ref = Referral(Patient(stack, openid=new_openid()))
    bed = sch_ev.BedReady(referral_id=ref.referral_id, booking_id="BB1", hospital_id=ref.hospital_id,
                          sending_institution_id=ref.clinic_id, ward="心内科一病区", room="305", bed="12",
                          place=sch_ev.Place(hospital_name="县人民医院", building="住院楼", floor="1楼"))
    bed.admit_by_time.FromDatetime(local(2030, 4, 2, 14, 0))
    env = {**vendor_env(*vendors), "QUIET_HOURS": "21:00-08:00"}
    async with notify_service(stack, monkeypatch, env, clock=clock):
        await publish(broker, ref_ev.ReferralSubmitted(referral=ref.snapshot()), ref)
        await eventually(lambda: _route_known(db, ref.referral_id))
        await publish(broker, bed, ref)
        await eventually(lambda: len(wechat.accepted) == 1)
    data = wechat.accepted[0]["data"]
    assert data == {"thing1": "县人民医院心内科一病区12床", "time2": "2030年4月2日 14:00",
                    "thing3": "住院楼1楼办理入院", "thing4": "请携带身份证和医保卡"}
    kinds = await db.fetch("SELECT payload FROM notify.outbox WHERE aggregate_id = $1", ref.referral_id)
    from common.v1 import event_pb2
    env_ = event_pb2.EventEnvelope.FromString(kinds[-1]["payload"])
    update = notify_ev.ReferralUpdateForClinic()
    env_.payload.Unpack(update)
    assert update.kind == notify_ev.CLINIC_UPDATE_KIND_BED_READY and update.patient_notified


async def test_down_referral_tells_clinic_and_first_follow_up(stack, monkeypatch, vendors, broker):
    _, aliyun, _ = vendors
    ref = Referral(Patient(stack))
    snap = ref.snapshot()
    snap.direction = 2  # DIRECTION_DOWN
    snap.sending_institution_id, snap.receiving_institution_id = ref.hospital_id, ref.clinic_id
    event = ref_ev.DownReferralProposed(referral=snap, origin_referral_id="R0", clinic_name="城关镇卫生院",
                                        clinic_address="城关镇人民路8号")
    event.first_follow_up_date.year, event.first_follow_up_date.month, event.first_follow_up_date.day = 2031, 5, 20
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)):
        await publish(broker, event, ref)
        await eventually(lambda: len(aliyun.accepted) == 1)
    assert aliyun.accepted[0]["params"] == {"clinic": "城关镇卫生院", "followup": "5月20日",
                                            "address": "城关镇人民路8号"}
