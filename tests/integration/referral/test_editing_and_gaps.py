"""Editing a draft or returned referral (UpdateReferral, AIP-134 field mask), rebooking
after a no-show, the scheduling-stage SLA target, change-log retention for watches,
and the audited reveal of a patient's full identifiers."""
from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta, timezone

import grpc
from google.protobuf import field_mask_pb2

from referral.v1 import referral_service_pb2 as api, types_pb2 as rtypes
from services.common import messaging
from services.referral.service_layer import retention
from services.referral.service_layer.services import ReferralService
from tests.integration.referral.world import expect_error, pdate

S = rtypes


def _mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def _need(need_id: str, department: str = "neurology") -> rtypes.ResourceNeed:
    return rtypes.ResourceNeed(need_id=need_id, consultation=rtypes.ConsultationNeed(department=department))


async def test_update_a_draft_with_a_field_mask_then_submit(world):
    clinic = world.clinics[0]
    draft = await world.create(draft=True, consent=False)
    soon = date.today() + timedelta(days=5)
    updated = await world.stub.UpdateReferral(api.UpdateReferralRequest(
        referral=api.Referral(name=draft.name, needs=[_need("c1"), _need("c2", "cardiology")],
                              justification="需上级医院会诊", available_dates=[pdate(soon)],
                              consent=api.Consent(given=True, method="签字"),
                              clinical_summary="not in the mask: ignored"),
        update_mask=_mask("needs", "justification", "available_dates", "consent")), metadata=world.md(clinic))
    assert [n.need_id for n in updated.needs] == ["c1", "c2"] and updated.justification == "需上级医院会诊"
    assert [(d.year, d.month, d.day) for d in updated.available_dates] == [(soon.year, soon.month, soon.day)]
    assert updated.consent.given and updated.clinical_summary == draft.clinical_summary
    assert updated.state == S.REFERRAL_STATE_DRAFT and updated.version > draft.version
    # Empty mask: the populated editable fields only.
    again = await world.stub.UpdateReferral(api.UpdateReferralRequest(
        referral=api.Referral(name=draft.name, additional_information="补充：既往史")), metadata=world.md(clinic))
    assert again.additional_information == "补充：既往史" and [n.need_id for n in again.needs] == ["c1", "c2"]
    submitted = await world.call("SubmitReferral", clinic, draft.name)
    assert submitted.state == S.REFERRAL_STATE_SUBMITTED

    # Once submitted it can no longer be edited; bad masks and fields change nothing.
    await expect_error(grpc.StatusCode.FAILED_PRECONDITION, world.stub.UpdateReferral(api.UpdateReferralRequest(
        referral=api.Referral(name=draft.name, justification="x"), update_mask=_mask("justification")),
        metadata=world.md(clinic)))
    bad = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, world.stub.UpdateReferral(api.UpdateReferralRequest(
        referral=api.Referral(name=draft.name, needs=[]), update_mask=_mask("needs", "state")),
        metadata=world.md(clinic)))
    assert "state" in bad.details() or "update_mask" in str(bad.trailing_metadata())


async def test_a_returned_referral_is_edited_by_the_sender_only_then_resubmitted(world):
    clinic = world.clinics[0]
    r = await world.create()
    await world.call("ReturnReferral", world.hospital, r.name, reason="请补充检查结果")
    result = api.PriorResult(exam_type="CT", body_part="头颅", result_date=pdate(date.today() - timedelta(days=2)),
                             institution_id=clinic, reference="CT-001")
    ct = rtypes.ResourceNeed(need_id="e1", exam=rtypes.ExamNeed(modality="CT", body_part="头颅"))
    request = api.UpdateReferralRequest(referral=api.Referral(name=r.name, prior_results=[result],
                                                              needs=[_need("c1"), ct]),
                                        update_mask=_mask("prior_results", "needs"))
    # The receiver, another clinic and the office cannot edit.
    await expect_error(grpc.StatusCode.PERMISSION_DENIED, world.stub.UpdateReferral(
        request, metadata=world.md(world.hospital)))
    await expect_error(grpc.StatusCode.NOT_FOUND, world.stub.UpdateReferral(
        request, metadata=world.md(world.clinics[1])))
    await expect_error(grpc.StatusCode.PERMISSION_DENIED, world.stub.UpdateReferral(request, metadata=world.office))
    edited = await world.stub.UpdateReferral(request, metadata=world.md(clinic))
    assert edited.state == S.REFERRAL_STATE_RETURNED and edited.prior_results[0].valid
    assert {n.need_id: n.covered_by_prior_result for n in edited.needs} == {"c1": False, "e1": True}
    resubmitted = await world.call("ResubmitReferral", clinic, r.name, additional_information="已补充CT")
    assert resubmitted.state == S.REFERRAL_STATE_SUBMITTED and len(resubmitted.prior_results) == 1


async def test_rebook_after_a_no_show_accepts_again_and_publishes_a_fresh_acceptance(world, stack):
    r = await world.create()
    await world.call("AcceptReferral", world.hospital, r.name)
    # Not before a no-show, not without a reason, not by the sender.
    await expect_error(grpc.StatusCode.FAILED_PRECONDITION,
                       world.call("RebookReferral", world.hospital, r.name, reason="患者要求"))
    await world.call("RecordNoShow", world.hospital, r.name, note="未到")
    await expect_error(grpc.StatusCode.INVALID_ARGUMENT, world.call("RebookReferral", world.hospital, r.name))
    await expect_error(grpc.StatusCode.PERMISSION_DENIED,
                       world.call("RebookReferral", world.clinics[0], r.name, reason="患者要求"))
    rebooked = await world.call("RebookReferral", world.hospital, r.name, reason="患者因天气未能到诊，重新预约")
    assert rebooked.state == S.REFERRAL_STATE_ACCEPTED and not rebooked.booking_id
    last = rebooked.history[-1]
    assert (last.from_state, last.to_state) == (S.REFERRAL_STATE_NO_SHOW, S.REFERRAL_STATE_ACCEPTED)
    assert last.reason == "患者因天气未能到诊，重新预约"

    broker = await messaging.Broker.connect(stack.nats_url, name="rebook-test")
    try:
        sub = await broker.js.pull_subscribe(f"referral.v1.ReferralAccepted.{world.hospital}", stream="REFERRAL")
        accepted = []
        deadline = asyncio.get_running_loop().time() + 15
        while len(accepted) < 2 and asyncio.get_running_loop().time() < deadline:
            try:
                msgs = await sub.fetch(10, timeout=0.5)
            except Exception:  # noqa: BLE001 - nothing yet
                continue
            for m in msgs:
                await m.ack()
                accepted.append(m.headers.get("Nats-Msg-Id"))
        # Two acceptances of the one referral: distinct event ids, so the scheduler's inbox
        # takes the second as a new placement.
        assert len(accepted) == 2 and len(set(accepted)) == 2
    finally:
        await broker.close()


async def test_scheduling_stage_has_its_own_sla_target(world, referral_app):
    name = f"consortiums/{world.consortium}"
    got = await world.stub.GetConsortium(api.GetConsortiumRequest(name=name), metadata=world.office)
    assert (got.emergency_scheduling_hours, got.urgent_scheduling_hours, got.routine_scheduling_hours) == (4, 48, 168)
    updated = await world.stub.UpdateConsortium(api.UpdateConsortiumRequest(
        consortium=api.Consortium(name=name, routine_scheduling_hours=10),
        update_mask=_mask("routine_scheduling_hours")), metadata=world.office)
    assert updated.routine_scheduling_hours == 10 and updated.routine_acceptance_hours == 72
    await expect_error(grpc.StatusCode.INVALID_ARGUMENT, world.stub.UpdateConsortium(api.UpdateConsortiumRequest(
        consortium=api.Consortium(name=name, routine_scheduling_hours=-1),
        update_mask=_mask("routine_scheduling_hours")), metadata=world.office))

    pool = referral_app.ctx.pool
    late, fine = await world.create(), await world.create()
    for r in (late, fine):
        await world.call("AcceptReferral", world.hospital, r.name)
    ids = [r.name.split("/")[1] for r in (late, fine)]
    # Accepted 12 h ago: past the 10 h scheduling target, well inside the 72 h acceptance one.
    # (The wait for a booking starts at the acceptance in the history.)
    for referral_id, hours in ((ids[0], 12), (ids[1], 8)):
        await pool.execute("UPDATE referral_transitions SET at = now() - make_interval(hours => $2) "
                           "WHERE referral_id = $1 AND to_state = 4", referral_id, hours)
    svc = ReferralService(pool, referral_app.ctx.pii, clock=lambda: datetime.now(timezone.utc))
    await svc.check_sla()
    rows = await pool.fetch("SELECT referral_id, stage FROM sla_breaches WHERE referral_id = ANY($1::text[])", ids)
    assert [(r["referral_id"], r["stage"]) for r in rows] == [(ids[0], "scheduling")]


async def test_watch_cursor_older_than_the_retention_fails_clearly(world, referral_app):
    pool = referral_app.ctx.pool
    first = await world.create()
    await world.call("AcceptReferral", world.hospital, first.name)
    second = await world.create()
    stream = world.stub.WatchReferrals(api.WatchReferralsRequest(cursor="0"), metadata=world.office)
    cursors = []
    async for change in stream:
        cursors.append(int(change.cursor))
        if len(cursors) == 3:
            break
    stream.cancel()
    # The first two changes are 40 days old; the retention is 30 days.
    await pool.execute("UPDATE referral_changes SET created_at = now() - interval '40 days' "
                       "WHERE consortium_id = $1 AND seq <= $2", world.consortium, cursors[1])
    assert await retention.purge(pool, datetime.now(timezone.utc), timedelta(days=30)) >= 2
    assert await pool.fetchval("SELECT changes_purged_through FROM consortiums WHERE consortium_id = $1",
                               world.consortium) == cursors[1]

    expired = world.stub.WatchReferrals(api.WatchReferralsRequest(cursor=str(cursors[0])), metadata=world.office)
    err = await expect_error(grpc.StatusCode.FAILED_PRECONDITION, _first(expired))
    assert "cursor expired, resync with ListReferrals" in err.details()
    # At the mark, and "0" (the retained history), resume without error.
    for cursor in (str(cursors[1]), "0"):
        resumed = world.stub.WatchReferrals(api.WatchReferralsRequest(cursor=cursor), metadata=world.office)
        change = await _first(resumed)
        assert int(change.cursor) == cursors[2] and change.referral.name == second.name


async def _first(call):
    try:
        async with asyncio.timeout(10):
            async for change in call:
                return change
    finally:
        call.cancel()


async def test_reveal_patient_contact_needs_a_reason_and_is_audited(world, referral_app):
    request = world.request()
    r = await world.stub.CreateReferral(request, metadata=world.md(world.clinics[0]))
    for who in (world.clinics[0], world.hospital):
        contact = await world.stub.RevealPatientContact(api.RevealPatientContactRequest(
            name=r.name, reason=f"电话联系患者确认就诊 {who}"), metadata=world.md(who))
        assert (contact.id_number, contact.mobile) == (request.patient.id_number, request.patient.mobile)
        assert contact.display_name == request.patient.display_name and contact.referral == r.name
    await expect_error(grpc.StatusCode.INVALID_ARGUMENT, world.stub.RevealPatientContact(
        api.RevealPatientContactRequest(name=r.name, reason="  "), metadata=world.md(world.clinics[0])))
    await expect_error(grpc.StatusCode.NOT_FOUND, world.stub.RevealPatientContact(
        api.RevealPatientContactRequest(name=r.name, reason="好奇"), metadata=world.md(world.clinics[1])))
    await expect_error(grpc.StatusCode.PERMISSION_DENIED, world.stub.RevealPatientContact(
        api.RevealPatientContactRequest(name=r.name, reason="统计"), metadata=world.office))
    rows = await referral_app.ctx.pool.fetch(
        "SELECT institution_id, action, reason, patient_id FROM audit_log WHERE resource = $1 "
        "AND action = 'RevealPatientContact' ORDER BY id", r.name)
    assert [(x["institution_id"], x["reason"]) for x in rows] == [
        (world.clinics[0], f"电话联系患者确认就诊 {world.clinics[0]}"), (world.hospital, f"电话联系患者确认就诊 {world.hospital}")]
    assert all(x["patient_id"] == r.patient.patient_id for x in rows)
