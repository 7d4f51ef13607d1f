"""Reminders are rows with a due time: they survive a restart and follow the booking's changes."""
from __future__ import annotations

from referral.v1 import events_pb2 as ref_ev
from scheduling.v1 import events_pb2 as sch_ev

from .notify_support import AdjustableClock, Patient, Referral, eventually, local, notify_service, publish, vendor_env


async def _reminders(db, referral_id):
    return await db.fetch(
        "SELECT n.template, n.part, n.booking_id, d.status FROM notify.notifications n "
        "JOIN notify.deliveries d ON d.notification_id = n.id WHERE n.referral_id = $1 AND n.reminder "
        "ORDER BY n.template, n.part, d.status", referral_id)


async def test_reminders_fire_after_a_restart_of_the_service(stack, monkeypatch, vendors, broker, db):
    _, aliyun, _ = vendors
    clock = AdjustableClock(local(2032, 6, 8, 12, 0))
    ref = Referral(Patient(stack))
    item = ref.item(local(2032, 6, 10, 10, 0), item_id="consult")
    item.preparation = "空腹"
    env = {**vendor_env(*vendors), "QUIET_HOURS": "21:00-07:00"}
    async with notify_service(stack, monkeypatch, env, clock=clock):
        await publish(broker, ref.accepted(), ref)
        await publish(broker, ref.scheduled([item]), ref)
        await eventually(lambda: len(aliyun.accepted) == 2)
        assert [r["status"] for r in await _reminders(db, ref.referral_id)] == ["PENDING", "PENDING"]
    # The service is down; time passes; a new process (same database) takes over.
    clock.set_local(local(2032, 6, 9, 18, 1))
    async with notify_service(stack, monkeypatch, env, clock=clock, restart=True):
        await eventually(lambda: len(aliyun.accepted) == 3)
        day_before = aliyun.accepted[2]
        assert day_before["template_code"] == "SMS_470000501"
        assert day_before["params"]["time"] == "10:00" and day_before["params"]["prep"] == "空腹"
        clock.set_local(local(2032, 6, 10, 8, 1))
        await eventually(lambda: len(aliyun.accepted) == 4)
    assert aliyun.accepted[3]["template_code"] == "SMS_470000502"
    assert [r["status"] for r in await _reminders(db, ref.referral_id)] == ["SENT", "SENT"]


async def test_reschedule_replaces_reminders_and_cancellation_cancels_them(stack, monkeypatch, vendors, broker, db):
    _, aliyun, _ = vendors
    clock = AdjustableClock(local(2032, 7, 1, 9, 0))
    ref = Referral(Patient(stack))
    booking = ref.scheduled([ref.item(local(2032, 7, 5, 9, 30), item_id="a")], booking_id="BK" + ref.referral_id)
    async with notify_service(stack, monkeypatch, vendor_env(*vendors), clock=clock):
        await publish(broker, ref.accepted(), ref)
        await publish(broker, booking, ref)
        await eventually(lambda: len(aliyun.accepted) == 2)
        moved = sch_ev.BookingRescheduled(referral_id=ref.referral_id, booking_id=booking.booking_id,
                                          hospital_id=ref.hospital_id, sending_institution_id=ref.clinic_id,
                                          items=[ref.item(local(2032, 7, 6, 14, 0), item_id="a", room="心内科5诊室")],
                                          previous_items=list(booking.items), reason="医生停诊")
        await publish(broker, moved, ref)
        await eventually(lambda: len(aliyun.accepted) == 3)
        changed = aliyun.accepted[2]
        assert changed["template_code"] == "SMS_470000202"
        assert (changed["params"]["date"], changed["params"]["time"], changed["params"]["room"]) == (
            "7月6日", "14:00", "心内科5诊室")
        assert "医生停诊" not in str(changed)
        rows = await _reminders(db, ref.referral_id)
        assert sorted(r["status"] for r in rows) == ["CANCELLED", "CANCELLED", "PENDING", "PENDING"]
        await publish(broker, sch_ev.BookingCancelled(referral_id=ref.referral_id, booking_id=booking.booking_id,
                                                      hospital_id=ref.hospital_id, reason="患者改期"), ref)
        await eventually(lambda: len(aliyun.accepted) == 4)
    cancelled = aliyun.accepted[3]
    assert cancelled["template_code"] == "SMS_470000203"
    assert cancelled["params"] == {"date": "7月6日", "time": "14:00", "hospital": "县人民医院"}
    assert {r["status"] for r in await _reminders(db, ref.referral_id)} == {"CANCELLED"}


async def test_referral_cancellation_cancels_pending_reminders(stack, monkeypatch, vendors, broker, db):
    _, aliyun, _ = vendors
    clock = AdjustableClock(local(2032, 8, 1, 9, 0))
    ref = Referral(Patient(stack))
    async with notify_service(stack, monkeypatch, vendor_env(*vendors), clock=clock):
        await publish(broker, ref.accepted(), ref)
        await publish(broker, ref.scheduled([ref.item(local(2032, 8, 3, 9, 30))]), ref)
        await eventually(lambda: len(aliyun.accepted) == 2)
        await publish(broker, ref_ev.ReferralCancelled(referral=ref.snapshot(), reason="患者撤回同意"), ref)
        await eventually(lambda: len(aliyun.accepted) == 3)
    assert {r["status"] for r in await _reminders(db, ref.referral_id)} == {"CANCELLED"}
