"""A message still waiting (quiet hours, a reminder) never goes out once a later event made it
untrue; and what a later event says is only what the patient does not know yet."""
from __future__ import annotations

import contextlib
from datetime import datetime

from common.v1 import event_pb2
from notify.v1 import events_pb2 as notify_ev
from referral.v1 import events_pb2 as ref_ev
from scheduling.v1 import events_pb2 as sch_ev

from .notify_support import AdjustableClock, Patient, Referral, eventually, local, notify_service, publish, vendor_env

BRING = "身份证、医保卡、转诊单及既往检查结果"  # what scheduling tells patients to bring


async def _deliveries(db, referral_id: str) -> list:
    return await db.fetch(
        "SELECT n.template, n.part, d.status FROM notify.notifications n "
        "JOIN notify.deliveries d ON d.notification_id = n.id WHERE n.referral_id = $1 "
        "ORDER BY n.template, n.part, d.created_at", referral_id)


async def _status_of(db, referral_id: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in await _deliveries(db, referral_id):
        out.setdefault(r["template"], set()).add(r["status"])
    return out


async def _settled(db, referral_id: str) -> bool:
    """No delivery of the referral waits or is in flight any more."""
    return all(r["status"] not in ("PENDING", "SENDING") for r in await _deliveries(db, referral_id))


async def _planned(db, referral_id: str, template: str) -> bool:
    return template in await _status_of(db, referral_id)


async def _clinic_updates(db, referral_id: str) -> list:
    out = []
    for r in await db.fetch("SELECT payload FROM notify.outbox WHERE aggregate_id = $1 "
                            "AND event_type = 'notify.v1.ReferralUpdateForClinic' ORDER BY seq", referral_id):
        update = notify_ev.ReferralUpdateForClinic()
        event_pb2.EventEnvelope.FromString(r["payload"]).payload.Unpack(update)
        out.append(update)
    return out


async def _booking_cancellation(db, ref: Referral) -> notify_ev.ReferralUpdateForClinic | None:
    """The clinic's update for a booking cancellation, once notify handled it."""
    return next((u for u in await _clinic_updates(db, ref.referral_id)
                 if u.kind == notify_ev.CLINIC_UPDATE_KIND_BOOKING_CANCELLED), None)


def _cancelled(ref: Referral, booking_id: str, reason: str = "患者改期") -> sch_ev.BookingCancelled:
    return sch_ev.BookingCancelled(referral_id=ref.referral_id, booking_id=booking_id, hospital_id=ref.hospital_id,
                                   sending_institution_id=ref.clinic_id, reason=reason)


@contextlib.asynccontextmanager
async def _booked_at_night(stack, monkeypatch, vendors, broker, db, night: datetime, appointment: datetime):
    """A referral accepted and booked at `night` (quiet hours from 21:00), inside a running
    notify, once its booking message is planned: (clock, referral, booking event)."""
    clock = AdjustableClock(night)
    ref = Referral(Patient(stack))
    booking = ref.scheduled([ref.item(appointment, item_id="consult")])
    env = {**vendor_env(*vendors), "QUIET_HOURS": "21:00-08:00"}
    async with notify_service(stack, monkeypatch, env, clock=clock):
        await publish(broker, ref.accepted(), ref)
        await publish(broker, booking, ref)
        await eventually(lambda: _planned(db, ref.referral_id, "appointment_booked"))
        yield clock, ref, booking


async def test_a_booking_cancelled_overnight_is_not_announced_in_the_morning(stack, monkeypatch, vendors, broker,
                                                                             db):
    _, aliyun, _ = vendors
    # 12.5 hours ahead: the booking message waits for the morning.
    async with _booked_at_night(stack, monkeypatch, vendors, broker, db, local(2033, 3, 1, 21, 30),
                                local(2033, 3, 2, 10, 0)) as (clock, ref, booking):
        assert (await _status_of(db, ref.referral_id))["appointment_booked"] == {"PENDING"}
        clock.set_local(local(2033, 3, 1, 22, 30))
        await publish(broker, _cancelled(ref, booking.booking_id), ref)
        # 11.5 hours ahead: the cancellation cannot wait.
        await eventually(lambda: len(aliyun.accepted) == 1)
        clock.set_local(local(2033, 3, 2, 8, 1))
        await eventually(lambda: _settled(db, ref.referral_id))
    statuses = await _status_of(db, ref.referral_id)
    assert statuses["appointment_booked"] == {"CANCELLED"}
    assert statuses["appointment_cancelled"] == {"SENT"} and statuses["referral_accepted"] == {"SENT"}
    assert [m["template_code"] for m in aliyun.accepted] == ["SMS_470000203", "SMS_470000101"]


async def test_a_cancelled_referral_s_waiting_messages_stay_unsent_and_its_booking_s_cancellation_adds_nothing(
        stack, monkeypatch, vendors, broker, db):
    _, aliyun, _ = vendors
    async with _booked_at_night(stack, monkeypatch, vendors, broker, db, local(2033, 3, 10, 21, 30),
                                local(2033, 3, 14, 10, 0)) as (clock, ref, booking):
        clock.set_local(local(2033, 3, 10, 22, 30))
        await publish(broker, ref_ev.ReferralCancelled(referral=ref.snapshot(), reason="患者撤回同意"), ref)
        await eventually(lambda: _planned(db, ref.referral_id, "referral_cancelled"))
        # Scheduling cancels the referral's booking in turn.
        await publish(broker, _cancelled(ref, booking.booking_id, reason="转诊已取消"), ref)
        await eventually(lambda: _booking_cancellation(db, ref))
        clock.set_local(local(2033, 3, 11, 8, 1))
        await eventually(lambda: _settled(db, ref.referral_id))
    statuses = await _status_of(db, ref.referral_id)
    # Only the referral's cancellation, which says its appointments went with it, reaches the patient.
    assert statuses == {"referral_accepted": {"CANCELLED"}, "appointment_booked": {"CANCELLED"},
                        "reminder_day_before": {"CANCELLED"}, "reminder_2h": {"CANCELLED"},
                        "referral_cancelled": {"SENT"}}
    assert [m["template_code"] for m in aliyun.accepted] == ["SMS_470000104"]
    update = await _booking_cancellation(db, ref)
    assert not update.patient_notified


async def test_a_booking_that_reaches_notify_after_its_referral_s_cancellation_is_never_announced(
        stack, monkeypatch, vendors, broker, db):
    _, aliyun, _ = vendors
    ref = Referral(Patient(stack))
    booking = ref.scheduled([ref.item(local(2033, 5, 6, 10, 0), item_id="consult")])
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)):
        await publish(broker, ref.accepted(), ref)
        await eventually(lambda: len(aliyun.accepted) == 1)
        await publish(broker, ref_ev.ReferralCancelled(referral=ref.snapshot(), reason="患者撤回同意"), ref)
        await eventually(lambda: len(aliyun.accepted) == 2)
        # Scheduling booked just before the cancellation reached it; its events come late.
        await publish(broker, booking, ref)
        await publish(broker, _cancelled(ref, booking.booking_id, reason="转诊已取消"), ref)
        await eventually(lambda: _booking_cancellation(db, ref))
    assert await _status_of(db, ref.referral_id) == {"referral_accepted": {"SENT"}, "referral_cancelled": {"SENT"}}
    assert [m["template_code"] for m in aliyun.accepted] == ["SMS_470000101", "SMS_470000104"]


async def test_the_cancellation_of_a_booking_notify_never_announced_says_nothing_made_up(
        stack, monkeypatch, vendors, broker, db):
    _, aliyun, _ = vendors
    ref = Referral(Patient(stack))
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)):
        await publish(broker, ref.accepted(), ref)
        await eventually(lambda: len(aliyun.accepted) == 1)
        await publish(broker, _cancelled(ref, "B-never-seen"), ref)
        await eventually(lambda: _booking_cancellation(db, ref))
    assert await _status_of(db, ref.referral_id) == {"referral_accepted": {"SENT"}}
    assert await db.fetchval("SELECT count(*) FROM notify.notifications WHERE referral_id = $1 "
                             "AND template = 'appointment_cancelled'", ref.referral_id) == 0
    update = await _booking_cancellation(db, ref)
    assert not update.patient_notified and update.reason == "患者改期"


async def test_a_reschedule_announces_what_moved_with_what_to_bring_as_told_at_booking(
        stack, monkeypatch, vendors, broker, db):
    _, aliyun, _ = vendors
    clock = AdjustableClock(local(2033, 4, 1, 9, 0))
    ref = Referral(Patient(stack))
    consult = ref.item(local(2033, 4, 5, 9, 30), item_id="consult")
    exam = ref.item(local(2033, 4, 5, 10, 30), kind=sch_ev.ITEM_KIND_EXAM, item_id="exam", room="超声3室")
    booking = ref.scheduled([consult, exam], bring=BRING)
    async with notify_service(stack, monkeypatch, vendor_env(*vendors), clock=clock):
        await publish(broker, ref.accepted(), ref)
        await publish(broker, booking, ref)
        await eventually(lambda: len(aliyun.accepted) == 3)
        later_exam = ref.item(local(2033, 4, 6, 8, 0), kind=sch_ev.ITEM_KIND_EXAM, item_id="exam", room="超声5室")
        moved = sch_ev.BookingRescheduled(referral_id=ref.referral_id, booking_id=booking.booking_id,
                                          hospital_id=ref.hospital_id, sending_institution_id=ref.clinic_id,
                                          items=[consult, later_exam], previous_items=list(booking.items),
                                          reason="设备检修")
        await publish(broker, moved, ref)
        await eventually(lambda: len(aliyun.accepted) == 4)
    changed = await db.fetch("SELECT part, text FROM notify.notifications WHERE referral_id = $1 "
                             "AND template IN ('appointment_changed', 'exam_changed')", ref.referral_id)
    assert [r["part"] for r in changed] == ["exam"]
    assert changed[0]["text"] == (f"您的检查已改约至4月6日 08:00，地点县人民医院门诊楼3楼超声5室，请携带{BRING}。"
                                  "无需特殊准备")
    # The consultation stayed: its reminders stay planned; the exam's are planned anew.
    reminders = sorted((r["part"], r["status"]) for r in await _deliveries(db, ref.referral_id)
                       if "reminder_" in r["template"])
    assert reminders == [("consult", "PENDING"), ("consult", "PENDING"), ("exam", "CANCELLED"),
                         ("exam", "CANCELLED"), ("exam", "PENDING"), ("exam", "PENDING")]
