"""Receipts update deliveries once; a redelivered event or receipt produces nothing twice."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time

import aiohttp

from datetime import timedelta

from referral.v1 import events_pb2 as ref_ev
from services.notify.adapters import repository
from tests.fakes.sandbox import WECHAT_EVENT_TOKEN
from tests.support.metrics import metric

from .notify_support import (
    AdjustableClock, Patient, Referral, delivery_of, eventually, has_status, local, new_openid, notify_service, publish,
    vendor_env)


async def test_aliyun_receipt_marks_delivered_once(stack, monkeypatch, vendors, broker, db):
    _, aliyun, _ = vendors
    ref = Referral(Patient(stack))
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)) as (_, notify):
        await publish(broker, ref.accepted(), ref)
        await eventually(lambda: len(aliyun.accepted) == 1)
        await eventually(lambda: has_status(db, ref.referral_id, "SENT"))
        url = f"http://127.0.0.1:{notify.receipts.port}/receipts/aliyun"
        receipt = aliyun.receipt_for(aliyun.accepted[0])
        assert await aliyun.post_receipts(url, [receipt]) == (200, {"code": 0, "msg": "接收成功"})
        first = await delivery_of(db, ref.referral_id)
        # The vendor pushes the same receipt again (it did not see our answer).
        assert await aliyun.post_receipts(url, [receipt]) == (200, {"code": 0, "msg": "接收成功"})
        second = await delivery_of(db, ref.referral_id)
    assert first["status"] == "DELIVERED" and first["delivered_at"] is not None
    assert second["updated_at"] == first["updated_at"]
    assert await db.fetchval("SELECT count(*) FROM notify.receipts WHERE delivery_id = $1", first["id"]) == 1


async def test_tencent_failure_receipt_fails_the_delivery_and_tells_the_clinic(stack, monkeypatch, vendors, broker, db):
    _, _, tencent = vendors
    ref = Referral(Patient(stack))
    unreached = metric("notify_unreached_total", channel="sms")
    async with notify_service(stack, monkeypatch, vendor_env(*vendors, vendor="tencent")) as (_, notify):
        await publish(broker, ref.accepted(), ref)
        await eventually(lambda: len(tencent.accepted) == 1)
        await eventually(lambda: has_status(db, ref.referral_id, "SENT"))
        url = f"http://127.0.0.1:{notify.receipts.port}/receipts/tencent"
        receipt = tencent.receipt_for(tencent.accepted[0], delivered=False)
        for _ in range(2):
            assert await tencent.post_receipts(url, [receipt]) == (200, {"result": 0, "errmsg": "OK"})
    row = await delivery_of(db, ref.referral_id)
    assert row["status"] == "FAILED" and row["status_reason"] == "receipt: UNDELIV"
    assert row["vendor_message_id"] == tencent.accepted[0]["serial_no"]
    failures = await db.fetchval("SELECT count(*) FROM notify.outbox WHERE aggregate_id = $1 "
                                 "AND event_type = 'notify.v1.PatientNotificationFailed'", ref.referral_id)
    assert failures == 1
    assert metric("notify_unreached_total", channel="sms") == unreached + 1


def _answer_lost(vendors, **env) -> dict[str, str]:
    """Aliyun takes the first message but answers after notify stopped waiting."""
    _, aliyun, _ = vendors
    aliyun.answer_late()
    return {**vendor_env(*vendors), "NOTIFY_SEND_TIMEOUT_SECONDS": str(aliyun.stall_seconds / 4), **env}


async def test_a_receipt_for_an_attempt_whose_answer_was_lost_stops_its_retry(stack, monkeypatch, vendors, broker,
                                                                              db):
    _, aliyun, _ = vendors
    ref = Referral(Patient(stack))
    clock = AdjustableClock()
    env = _answer_lost(vendors, NOTIFY_RETRY_BASE_SECONDS="60")
    async with notify_service(stack, monkeypatch, env, clock=clock) as (_, notify):
        await publish(broker, ref.accepted(), ref)
        await eventually(lambda: _retry_waits(db, ref.referral_id))
        assert len(aliyun.accepted) == 1
        url = f"http://127.0.0.1:{notify.receipts.port}/receipts/aliyun"
        assert (await aliyun.post_receipts(url, [aliyun.receipt_for(aliyun.accepted[0])]))[0] == 200
        clock.advance(timedelta(hours=1))  # the retry is due
        await asyncio.sleep(1.0)  # several dispatcher polls
    row = await delivery_of(db, ref.referral_id)
    assert (row["status"], row["attempts"]) == ("DELIVERED", 1)
    assert len(aliyun.accepted) == 1 and aliyun.request_count == 1


async def test_a_receipt_that_comes_while_the_retry_is_claimed_stops_it(stack, monkeypatch, vendors, broker, db):
    _, aliyun, _ = vendors
    ref = Referral(Patient(stack))
    loads = []
    load_for_send = repository.load_for_send

    async def receipt_after_the_retry_is_claimed(conn, notification_id):
        loads.append(notification_id)
        if len(loads) == 2:  # the retry's claim
            url = f"http://127.0.0.1:{notify.receipts.port}/receipts/aliyun"
            assert (await aliyun.post_receipts(url, [aliyun.receipt_for(aliyun.accepted[0])]))[0] == 200
        return await load_for_send(conn, notification_id)

    monkeypatch.setattr(repository, "load_for_send", receipt_after_the_retry_is_claimed)
    async with notify_service(stack, monkeypatch, _answer_lost(vendors)) as (_, notify):
        await publish(broker, ref.accepted(), ref)
        await eventually(lambda: has_status(db, ref.referral_id, "DELIVERED"))
        await asyncio.sleep(1.0)
    row = await delivery_of(db, ref.referral_id)
    assert (row["status"], row["attempts"], len(loads)) == ("DELIVERED", 2, 2)
    assert len(aliyun.accepted) == 1 and aliyun.request_count == 1


async def _retry_waits(db, referral_id):
    row = await delivery_of(db, referral_id)
    return row is not None and row["status"] == "PENDING" and row["vendor_code"] == "TIMEOUT"


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
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)):
        await publish(broker, ref.scheduled([ref.item(local(2033, 1, 5, 9, 0))]), ref)
        await asyncio.sleep(0.8)
        assert aliyun.accepted == []
        await publish(broker, ref.accepted(), ref)
        await eventually(lambda: len(aliyun.accepted) == 2, timeout=15)
    assert sorted(r["template_code"] for r in aliyun.accepted) == ["SMS_470000101", "SMS_470000201"]


@contextlib.asynccontextmanager
async def _sent_on_wechat(stack, monkeypatch, vendors, broker, db):
    """A running notify that has sent a WeChat patient's acceptance message; yields the
    referral and notify's WeChat server URL."""
    wechat, _, _ = vendors
    ref = Referral(Patient(stack, openid=new_openid()))
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)) as (_, notify):
        await publish(broker, ref.accepted(), ref)
        await eventually(lambda: len(wechat.accepted) == 1)
        await eventually(lambda: has_status(db, ref.referral_id, "SENT"))
        yield ref, f"http://127.0.0.1:{notify.receipts.port}/wechat/events"


async def test_wechat_send_result_marks_delivered_and_is_signed(stack, monkeypatch, vendors, broker, db):
    wechat, _, _ = vendors
    async with _sent_on_wechat(stack, monkeypatch, vendors, broker, db) as (ref, url):
        record = wechat.accepted[0]
        # WeChat's one-time URL check, and pushes that are not WeChat's.
        async with aiohttp.ClientSession() as session:
            ts, nonce = str(int(time.time())), "4711"
            sig = hashlib.sha1("".join(sorted((WECHAT_EVENT_TOKEN, ts, nonce))).encode()).hexdigest()
            async with session.get(url, params={"signature": sig, "timestamp": ts, "nonce": nonce,
                                                "echostr": "echo-me"}) as response:
                assert (response.status, await response.text()) == (200, "echo-me")
            async with session.get(url, params={"signature": "0" * 40, "timestamp": ts, "nonce": nonce,
                                                "echostr": "echo-me"}) as response:
                assert response.status == 403
        assert (await wechat.push_event(url, "another-token", wechat.sent_event(record)))[0] == 403
        stale = int(time.time()) - 3600
        assert (await wechat.push_event(url, WECHAT_EVENT_TOKEN, wechat.sent_event(record), timestamp=stale))[0] == 403
        assert await has_status(db, ref.referral_id, "SENT")
        # The real push, as XML and again as JSON (WeChat may push twice): applied once.
        assert await wechat.push_event(url, WECHAT_EVENT_TOKEN, wechat.sent_event(record)) == (200, "success")
        first = await delivery_of(db, ref.referral_id)
        assert await wechat.push_event(url, WECHAT_EVENT_TOKEN, wechat.sent_event(record, fmt="json")) == (
            200, "success")
        second = await delivery_of(db, ref.referral_id)
    assert first["status"] == "DELIVERED" and first["delivered_at"] is not None
    assert second["updated_at"] == first["updated_at"]
    rows = await db.fetch("SELECT vendor, phone_hash, delivery_id FROM notify.receipts WHERE vendor = 'wechat' "
                          "AND vendor_message_id = $1", str(record["msgid"]))
    # The openid is kept only as the deployment's keyed hash.
    assert len(rows) == 1 and rows[0]["delivery_id"] == first["id"] and record["openid"] not in rows[0]["phone_hash"]


async def test_wechat_refusal_after_sending_falls_back_to_sms_and_stops_that_template(stack, monkeypatch, vendors,
                                                                                     broker, db):
    wechat, aliyun, _ = vendors
    before = (metric("notify_fallbacks_total", from_channel="wechat", to_channel="sms", cause="report"),
              metric("notify_delivery_reports_total", vendor="wechat", verdict="undelivered"),
              metric("notify_sends_total", channel="sms", vendor="aliyun", outcome="sent"))
    async with _sent_on_wechat(stack, monkeypatch, vendors, broker, db) as (ref, url):
        # WeChat took the message, then reports that the user refuses the account's messages.
        body = wechat.sent_event(wechat.accepted[0], error_code=43101)
        assert await wechat.push_event(url, WECHAT_EVENT_TOKEN, body) == (200, "success")
        await eventually(lambda: len(aliyun.accepted) == 1)
        await publish(broker, ref_ev.ReferralCancelled(referral=ref.snapshot(), reason="患者要求"), ref)
        await eventually(lambda: len(aliyun.accepted) == 2)
    deliveries = await db.fetch(
        "SELECT d.channel, d.status, d.status_reason, n.template FROM notify.deliveries d "
        "JOIN notify.notifications n ON n.id = d.notification_id WHERE n.referral_id = $1 "
        "ORDER BY d.created_at, d.id", ref.referral_id)
    assert [(d["template"], d["channel"], d["status"]) for d in deliveries] == [
        ("referral_accepted", "wechat", "FELL_BACK"), ("referral_accepted", "sms", "SENT"),
        ("referral_cancelled", "sms", "SENT")]
    assert deliveries[0]["status_reason"] == "receipt: 43101"
    after = (metric("notify_fallbacks_total", from_channel="wechat", to_channel="sms", cause="report"),
             metric("notify_delivery_reports_total", vendor="wechat", verdict="undelivered"),
             metric("notify_sends_total", channel="sms", vendor="aliyun", outcome="sent"))
    assert after == (before[0] + 1, before[1] + 1, before[2] + 2)
    assert len(wechat.accepted) == 1  # the refusal is remembered: WeChat is not tried again
    assert await db.fetchval("SELECT accepted FROM notify.wechat_template_choices WHERE openid = $1 "
                             "AND template_id = 'wx-tmpl-referral-status'", ref.patient.openid) is False
    # Another channel took over, so the clinic is not asked to call.
    assert await db.fetchval("SELECT count(*) FROM notify.outbox WHERE aggregate_id = $1 "
                             "AND event_type = 'notify.v1.PatientNotificationFailed'", ref.referral_id) == 0


async def test_wechat_template_choices_steer_each_template_and_the_newest_wins(stack, monkeypatch, vendors, broker,
                                                                             db):
    wechat, aliyun, _ = vendors
    refused = metric("notify_wechat_template_choices_total", template_id="wx-tmpl-referral-status", choice="refused")
    async with _sent_on_wechat(stack, monkeypatch, vendors, broker, db) as (ref, url):
        openid, status_tmpl = ref.patient.openid, "wx-tmpl-referral-status"
        assert wechat.accepted[0]["template_id"] == status_tmpl
        # In WeChat's settings the patient turns off the referral-status messages only.
        turned_off = int(time.time()) - 60
        body = wechat.user_chooses(openid, {status_tmpl: "reject"}, created=turned_off)
        assert await wechat.push_event(url, WECHAT_EVENT_TOKEN, body) == (200, "success")
        await publish(broker, ref_ev.ReferralReturned(referral=ref.snapshot(), reason="请补充检查结果"), ref)
        await eventually(lambda: len(aliyun.accepted) == 1)  # that template: straight to SMS
        await publish(broker, ref.scheduled([ref.item(local(2033, 1, 5, 9, 0))]), ref)
        await eventually(lambda: len(wechat.accepted) == 2)  # another template: still WeChat
        # Later the patient accepts it again in the pop-up; WeChat then pushes the older
        # settings change once more (its retry), which must not undo the newer choice.
        accept = wechat.user_chooses(openid, {status_tmpl: "accept", "wx-tmpl-reminder": "accept"}, popup=True,
                                     fmt="json")
        assert await wechat.push_event(url, WECHAT_EVENT_TOKEN, accept) == (200, "success")
        assert await wechat.push_event(url, WECHAT_EVENT_TOKEN, body) == (200, "success")
        await publish(broker, ref_ev.ReferralCancelled(referral=ref.snapshot(), reason="患者要求"), ref)
        await eventually(lambda: len(wechat.accepted) == 3)
    assert [r["template_id"] for r in wechat.accepted] == [status_tmpl, "wx-tmpl-appointment", status_tmpl]
    assert [r["template_code"] for r in aliyun.accepted] == ["SMS_470000102"]
    assert wechat.rejected == []  # no send was refused: every refusal was known before sending
    choices = {r["template_id"]: r["accepted"] for r in await db.fetch(
        "SELECT template_id, accepted FROM notify.wechat_template_choices WHERE openid = $1", openid)}
    assert choices == {status_tmpl: True, "wx-tmpl-reminder": True}
    # Counted as pushed: the settings change twice (WeChat's retry), the acceptance once.
    assert metric("notify_wechat_template_choices_total", template_id=status_tmpl, choice="refused") == refused + 2
