"""A Tencent send whose answer was lost: its retry asks Tencent's status pull first, so a
message Tencent took goes out once, and one it did not take goes out again."""
from __future__ import annotations

import pytest

from tests.fakes import STALL
from tests.support.metrics import metric

from .notify_support import Patient, Referral, delivery_of, eventually, has_status, notify_service, publish, vendor_env

PULL = "PullSmsSendStatusByPhoneNumber"
SETTLE_SECONDS = 1.0


def _answers_lost(vendors, **env) -> dict[str, str]:
    """Tencent as the SMS vendor; notify stops waiting for an answer well before the fake's
    late answers come, and retries only once the fake's carrier reports are in."""
    _, _, tencent = vendors
    tencent.report_delay = SETTLE_SECONDS / 2
    return {**vendor_env(*vendors, vendor="tencent"), "NOTIFY_SEND_TIMEOUT_SECONDS": str(tencent.stall_seconds / 4),
            "NOTIFY_TENCENT_SETTLE_SECONDS": str(SETTLE_SECONDS), **env}


async def _told(stack, monkeypatch, vendors, broker, db, ref: Referral, until: str, **env):
    """Runs notify until the referral's acceptance message is `until`; returns its delivery."""
    async with notify_service(stack, monkeypatch, _answers_lost(vendors, **env)):
        await publish(broker, ref.accepted(), ref)
        await eventually(lambda: has_status(db, ref.referral_id, until))
    return await delivery_of(db, ref.referral_id)


def _actions(tencent) -> list[str]:
    return [call["action"] for call in tencent.calls]


@pytest.mark.parametrize("lose", ["answer_late", "drop_answer"])
async def test_a_message_tencent_took_is_not_sent_again_when_its_answer_was_lost(stack, monkeypatch, vendors, broker,
                                                                                db, lose):
    _, _, tencent = vendors
    getattr(tencent, lose)()
    ref = Referral(Patient(stack))
    row = await _told(stack, monkeypatch, vendors, broker, db, ref, "DELIVERED")
    [taken] = tencent.accepted
    assert _actions(tencent) == ["SendSms", PULL]
    assert tencent.pulls[0]["found"] == [str(row["id"])]
    assert (row["attempts"], row["vendor_message_id"], row["unsettled_since"]) == (1, taken["serial_no"], None)
    assert await db.fetchval("SELECT count(*) FROM notify.receipts WHERE delivery_id = $1", row["id"]) == 1


async def test_a_taken_message_reported_undelivered_fails_and_the_clinic_is_told(stack, monkeypatch, vendors, broker,
                                                                               db):
    _, _, tencent = vendors
    tencent.answer_late()
    ref = Referral(Patient(stack))
    tencent.undelivered.add(ref.patient.mobile)
    row = await _told(stack, monkeypatch, vendors, broker, db, ref, "FAILED")
    assert _actions(tencent) == ["SendSms", PULL] and len(tencent.accepted) == 1
    assert row["status_reason"] == "receipt: UNDELIV"
    assert await db.fetchval("SELECT count(*) FROM notify.outbox WHERE aggregate_id = $1 "
                             "AND event_type = 'notify.v1.PatientNotificationFailed'", ref.referral_id) == 1


async def test_a_message_tencent_did_not_take_is_sent_again_after_the_settle_wait(stack, monkeypatch, vendors, broker,
                                                                                db):
    _, _, tencent = vendors
    tencent.fail_next(STALL, action="SendSms")  # no answer, and nothing taken
    ref = Referral(Patient(stack))
    row = await _told(stack, monkeypatch, vendors, broker, db, ref, "SENT")
    [taken] = tencent.accepted
    assert _actions(tencent) == ["SendSms", PULL, "SendSms"]
    first_send, pull, _ = tencent.calls
    assert pull["at"] - first_send["at"] >= SETTLE_SECONDS  # asked only once a report could be in
    assert tencent.pulls[0]["found"] == []
    assert (row["attempts"], row["vendor_message_id"], taken["session_context"]) == (2, taken["serial_no"],
                                                                                      str(row["id"]))


async def test_failing_status_pulls_hold_the_retry_until_the_bound_then_it_is_sent(stack, monkeypatch, vendors, broker,
                                                                                  db):
    _, _, tencent = vendors
    tencent.answer_late()
    tencent.fail_next("InternalError", times=3, action=PULL)
    ref = Referral(Patient(stack))
    sent_anyway = metric("notify_settle_pulls_total", vendor="tencent", result="failed_sent_anyway")
    row = await _told(stack, monkeypatch, vendors, broker, db, ref, "SENT", NOTIFY_TENCENT_SETTLE_PULLS="3")
    assert _actions(tencent) == ["SendSms", PULL, PULL, PULL, "SendSms"]
    assert [code for code, _ in tencent.rejected] == ["InternalError"] * 3
    # The bound reached, the retry went out blind: the patient got it twice, once per attempt.
    assert len(tencent.accepted) == 2 and row["attempts"] == 2 and row["settle_pulls"] == 0
    assert metric("notify_settle_pulls_total", vendor="tencent", result="failed_sent_anyway") == sent_anyway + 1
