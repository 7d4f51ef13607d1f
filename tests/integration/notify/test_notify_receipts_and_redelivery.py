"""Receipts update deliveries once; a redelivered event or receipt produces nothing twice."""
from __future__ import annotations

import asyncio

from .notify_support import Patient, Referral, eventually, notify_service, publish, vendor_env


async def _delivery(db, referral_id):
    return await db.fetchrow("SELECT d.* FROM notify.deliveries d JOIN notify.notifications n "
                             "ON n.id = d.notification_id WHERE n.referral_id = $1", referral_id)


async def test_aliyun_receipt_marks_delivered_once(stack, monkeypatch, vendors, broker, db):
    _, aliyun, _ = vendors
    ref = Referral(Patient(stack))
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)) as (_, notify):
        await publish(broker, ref.accepted(), ref)
        await eventually(lambda: len(aliyun.accepted) == 1)
        await eventually(lambda: _status(db, ref.referral_id, "SENT"))
        url = f"http://127.0.0.1:{notify.receipts.port}/receipts/aliyun"
        receipt = aliyun.receipt_for(aliyun.accepted[0])
        assert await aliyun.post_receipts(url, [receipt]) == (200, {"code": 0, "msg": "接收成功"})
        first = await _delivery(db, ref.referral_id)
        # The vendor pushes the same receipt again (it did not see our answer).
        assert await aliyun.post_receipts(url, [receipt]) == (200, {"code": 0, "msg": "接收成功"})
        second = await _delivery(db, ref.referral_id)
    assert first["status"] == "DELIVERED" and first["delivered_at"] is not None
    assert second["updated_at"] == first["updated_at"]
    assert await db.fetchval("SELECT count(*) FROM notify.receipts WHERE delivery_id = $1", first["id"]) == 1


async def _status(db, referral_id, status):
    row = await _delivery(db, referral_id)
    return row is not None and row["status"] == status


async def test_tencent_failure_receipt_fails_the_delivery_and_tells_the_clinic(stack, monkeypatch, vendors, broker, db):
    _, _, tencent = vendors
    ref = Referral(Patient(stack))
    async with notify_service(stack, monkeypatch, vendor_env(*vendors, vendor="tencent")) as (_, notify):
        await publish(broker, ref.accepted(), ref)
        await eventually(lambda: len(tencent.accepted) == 1)
        await eventually(lambda: _status(db, ref.referral_id, "SENT"))
        url = f"http://127.0.0.1:{notify.receipts.port}/receipts/tencent"
        receipt = tencent.receipt_for(tencent.accepted[0], delivered=False)
        for _ in range(2):
            assert await tencent.post_receipts(url, [receipt]) == (200, {"result": 0, "errmsg": "OK"})
    row = await _delivery(db, ref.referral_id)
    assert row["status"] == "FAILED" and row["status_reason"] == "receipt: UNDELIV"
    assert row["vendor_message_id"] == tencent.accepted[0]["serial_no"]
    failures = await db.fetchval("SELECT count(*) FROM notify.outbox WHERE aggregate_id = $1 "
                                 "AND event_type = 'notify.v1.PatientNotificationFailed'", ref.referral_id)
    assert failures == 1


async def test_malformed_receipt_is_refused(stack, monkeypatch, vendors):
    _, aliyun, _ = vendors
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)) as (_, notify):
        status, body = await aliyun.post_receipts(f"http://127.0.0.1:{notify.receipts.port}/receipts/aliyun",
                                                  [{"phone_number": "13800000000"}])
    assert status == 400 and body["code"] != 0


async def test_redelivered_event_sends_nothing_twice(stack, monkeypatch, vendors, broker, db):
    _, aliyun, _ = vendors
    ref = Referral(Patient(stack))
    event = ref.accepted()
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)):
        event_id = await publish(broker, event, ref)
        await eventually(lambda: len(aliyun.accepted) == 1)
        # The same event again, past JetStream's duplicate window (another Nats-Msg-Id).
        await publish(broker, event, ref, event_id=event_id, msg_id=event_id + "-again")
        await eventually(lambda: _inbox_seen(db, event_id))
        await asyncio.sleep(1.0)
    assert len(aliyun.accepted) == 1
    assert await db.fetchval("SELECT count(*) FROM notify.notifications WHERE event_id = $1", event_id) == 1
    assert await db.fetchval("SELECT count(*) FROM notify.outbox WHERE aggregate_id = $1", ref.referral_id) == 1


async def _inbox_seen(db, event_id):
    return await db.fetchval("SELECT count(*) FROM notify.inbox WHERE event_id = $1", event_id) == 1


async def test_scheduling_event_before_its_referral_waits_for_it(stack, monkeypatch, vendors, broker, db):
    _, aliyun, _ = vendors
    ref = Referral(Patient(stack))
    from .notify_support import local
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)):
        await publish(broker, ref.scheduled([ref.item(local(2033, 1, 5, 9, 0))]), ref)
        await asyncio.sleep(0.8)
        assert aliyun.accepted == []
        await publish(broker, ref.accepted(), ref)
        await eventually(lambda: len(aliyun.accepted) == 2, timeout=15)
    assert sorted(r["template_code"] for r in aliyun.accepted) == ["SMS_470000101", "SMS_470000201"]
