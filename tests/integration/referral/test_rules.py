"""Catalogue and result-recognition rules, billing continuity, chronic care, bad
input (nothing written), indicators and the SLA job, against the real database."""
from datetime import date, datetime, timedelta, timezone

import grpc

from common.v1 import types_pb2 as common
from referral.v1 import referral_service_pb2 as api, types_pb2 as rtypes
from services.referral.service_layer.services import ReferralService
from tests.support.rpc_errors import field_violations

from .world import expect_error, pdate


def _violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    return dict(field_violations(error))


async def _counts(pool):
    return [await pool.fetchval(f"SELECT count(*) FROM {t}") for t in
            ("referrals", "referral_transitions", "outbox", "referral_changes", "episodes")]


async def test_bad_input_names_every_field_and_writes_nothing(world, referral_app):
    pool = referral_app.ctx.pool
    before = await _counts(pool)
    request = world.request(receiver="NOSUCH")
    request.patient.id_number = request.patient.id_number[:17] + ("0" if request.patient.id_number[17] != "0" else "1")
    request.patient.mobile = "12345"
    request.referral.diagnosis_code = "hypertension"
    request.referral.available_dates.append(common.Date(year=2001, month=1, day=1))
    request.referral.prior_results.append(api.PriorResult(exam_type="CT", reference="r1",
                                                          result_date=pdate(date.today() + timedelta(days=5))))
    error = await expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                               world.stub.CreateReferral(request, metadata=world.md(world.clinics[0])))
    fields = _violations(error)
    assert {"patient.id_number", "patient.mobile", "referral.diagnosis_code", "referral.available_dates[2]",
            "referral.prior_results[0].result_date"} <= set(fields)
    assert "校验码" in fields["patient.id_number"]
    # Shape is fine but the institution is unknown: still INVALID_ARGUMENT, still nothing written.
    error = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, world.stub.CreateReferral(
        world.request(receiver="NOSUCH"), metadata=world.md(world.clinics[0])))
    assert "referral.receiving_institution_id" in _violations(error)
    # Wrong direction for the levels (a clinic "down-referring" to the hospital).
    error = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, world.stub.CreateReferral(
        world.request(direction=2), metadata=world.md(world.clinics[0])))
    assert "referral.direction" in _violations(error)
    assert await _counts(pool) == before


async def test_catalogue_disease_needs_justification_and_recommends_down(world):
    # Township centres treat type 2 diabetes (E11): going up needs a reason.
    error = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, world.create(code="E11.9"))
    assert "referral.justification" in _violations(error)
    r = await world.create(code="E11.9", justification="血糖控制不佳，需调整方案")
    assert r.catalogue_disease
    # A stroke (I63) is a hospital disease: no reason needed.
    stroke = await world.create(code="I63.9")
    assert not stroke.catalogue_disease
    for name in (r.name, stroke.name):
        await world.call("AcceptReferral", world.hospital, name)
        await world.call("RecordArrival", world.hospital, name)
    done = await world.call("CompleteReferral", world.hospital, r.name, completion=api.Completion(findings="稳定"))
    assert done.down_referral_recommended
    done = await world.call("CompleteReferral", world.hospital, stroke.name, completion=api.Completion(findings="稳定"))
    assert not done.down_referral_recommended
    # A village clinic does not treat pneumonia (township level): no reason needed from there.
    check = await world.stub.CheckReferralRules(api.CheckReferralRulesRequest(
        diagnosis_code="J18.9", direction=1, receiving_institution_id=world.clinics[0]),
        metadata=world.md(world.village))
    assert check.allowed and not check.justification_required and check.catalogue_level == 2
    check = await world.stub.CheckReferralRules(api.CheckReferralRulesRequest(
        diagnosis_code="I10", direction=1, receiving_institution_id=world.hospital), metadata=world.md(world.village))
    assert check.justification_required and check.down_referral_recommended and check.catalogue_disease_name


async def test_draft_of_catalogue_disease_waits_for_justification(world):
    draft = await world.create(code="I10", draft=True)
    error = await expect_error(grpc.StatusCode.FAILED_PRECONDITION,
                               world.call("SubmitReferral", world.clinics[0], draft.name))
    assert "理由" in error.details()


async def test_valid_prior_results_cover_exams(world):
    today = date.today()
    needs = [rtypes.ResourceNeed(need_id="ct", exam=rtypes.ExamNeed(modality="CT", body_part="head")),
             rtypes.ResourceNeed(need_id="mri", exam=rtypes.ExamNeed(modality="MRI")),
             rtypes.ResourceNeed(need_id="blood", exam=rtypes.ExamNeed(modality="BLOOD_ROUTINE")),
             rtypes.ResourceNeed(need_id="c", consultation=rtypes.ConsultationNeed(department="neurology"))]
    results = [api.PriorResult(exam_type="CT", body_part="head", reference="CT-1", institution_id=world.clinics[0],
                               result_date=pdate(today - timedelta(days=10))),
               api.PriorResult(exam_type="BLOOD_ROUTINE", reference="B-1", result_date=pdate(today - timedelta(days=8)))]
    r = await world.create(needs=needs, results=results)
    covered = {n.need_id: (n.covered_by_prior_result, n.covering_result_reference) for n in r.needs}
    assert covered == {"ct": (True, "CT-1"), "mri": (False, ""), "blood": (False, ""), "c": (False, "")}
    assert [x.valid for x in r.prior_results] == [True, False]
    # A CT older than the 30-day window is not recognised.
    old = [api.PriorResult(exam_type="CT", reference="CT-0", result_date=pdate(today - timedelta(days=31)))]
    r = await world.create(needs=needs[:1], results=old)
    assert not r.needs[0].covered_by_prior_result


async def test_billing_continuity_and_down_referral_proposal(world, referral_app):
    admission = [rtypes.ResourceNeed(need_id="bed", admission=rtypes.AdmissionNeed(department="neurology",
                                                                                   expected_nights=7))]
    request = world.request(needs=admission)
    request.deductible_paid_fen = 30000
    up = await world.stub.CreateReferral(request, metadata=world.md(world.clinics[0]))
    assert up.billing.deductible_carried and up.billing.deductible_paid_fen == 30000 and up.billing.episode_id
    for method in ("AcceptReferral", "RecordArrival"):
        await world.call(method, world.hospital, up.name)
    follow = date.today() + timedelta(days=14)
    done = await world.call("CompleteReferral", world.hospital, up.name,
                            completion=api.Completion(findings="脑梗死恢复期", treatment_summary="溶栓后稳定"),
                            down_referral=api.DownReferralProposal(
                                care_plan="康复训练，每周随访", follow_up_dates=[pdate(follow)],
                                consent=api.Consent(given=True), purpose=rtypes.REFERRAL_PURPOSE_REHABILITATION))
    down_name = done.completion.down_referral
    assert done.state == rtypes.REFERRAL_STATE_COMPLETED and down_name
    down = await world.stub.GetReferral(api.GetReferralRequest(name=down_name), metadata=world.md(world.clinics[0]))
    assert down.direction == rtypes.DIRECTION_DOWN and down.state == rtypes.REFERRAL_STATE_SUBMITTED
    assert down.origin_referral == up.name and down.care_plan.startswith("康复")
    assert down.billing.deductible_waived and down.billing.episode_id == up.billing.episode_id
    assert down.patient.patient_id == up.patient.patient_id
    pool = referral_app.ctx.pool
    assert await _event_types(pool, down.name.split("/")[1]) == ["referral.v1.DownReferralProposed",
                                                                 "referral.v1.ReferralSubmitted"]
    assert (await _event_types(pool, up.name.split("/")[1]))[-1] == "referral.v1.ReferralCompleted"
    # The clinic closes the loop of the down-referral itself.
    for method in ("AcceptReferral", "RecordArrival"):
        down = await world.call(method, world.clinics[0], down.name)
    assert down.state == rtypes.REFERRAL_STATE_ARRIVED
    # A second referral of the same illness joins the episode.
    again = world.request(code="I63.8")
    again.patient.CopyFrom(request.patient)
    joined = await world.stub.CreateReferral(again, metadata=world.md(world.clinics[0]))
    assert joined.billing.episode_id == up.billing.episode_id and joined.billing.deductible_paid_fen == 30000


async def test_patient_identifiers_are_masked_and_encrypted(world, referral_app):
    request = world.request()
    r = await world.stub.CreateReferral(request, metadata=world.md(world.clinics[0]))
    assert r.patient.mobile_masked == request.patient.mobile[:3] + "****" + request.patient.mobile[-4:]
    assert r.patient.id_number_masked.endswith(request.patient.id_number[-4:]) and "*" in r.patient.id_number_masked
    assert r.patient.name_masked == "张*华"
    raw = await referral_app.ctx.pool.fetchval("SELECT body::text FROM referrals WHERE referral_id = $1",
                                               r.name.split("/")[1])
    assert request.patient.id_number not in raw and request.patient.mobile not in raw and "张测华" not in raw
    assert r.SerializeToString().find(request.patient.mobile.encode()) == -1


async def _event_types(pool, aggregate_id: str) -> list[str]:
    rows = await pool.fetch("SELECT event_type FROM outbox WHERE aggregate_id = $1 ORDER BY seq", aggregate_id)
    return [r["event_type"] for r in rows]


async def test_chronic_care_colour_change_proposes_referral(world, referral_app):
    patient = world.request().patient
    green = await world.stub.UpdateChronicCareStatus(api.UpdateChronicCareStatusRequest(
        patient=patient, condition_code="I10", colour=1), metadata=world.md(world.village))
    assert green.colour == 1 and not green.proposed_referral
    yellow = await world.stub.UpdateChronicCareStatus(api.UpdateChronicCareStatusRequest(
        patient=patient, condition_code="I10", colour=2, reason="血压控制不佳"), metadata=world.md(world.village))
    assert yellow.previous_colour == 1 and yellow.proposed_referral
    proposed = await world.stub.GetReferral(api.GetReferralRequest(name=yellow.proposed_referral),
                                            metadata=world.md(world.village))
    assert proposed.state == rtypes.REFERRAL_STATE_DRAFT and proposed.receiving_institution_id == world.clinics[0]
    assert proposed.purpose == rtypes.REFERRAL_PURPOSE_CHRONIC_CARE
    red = await world.stub.UpdateChronicCareStatus(api.UpdateChronicCareStatusRequest(
        patient=patient, condition_code="I10", colour=3), metadata=world.md(world.village))
    proposed = await world.stub.GetReferral(api.GetReferralRequest(name=red.proposed_referral),
                                            metadata=world.md(world.village))
    assert proposed.receiving_institution_id == world.hospital
    assert await _event_types(referral_app.ctx.pool, red.patient_id) == ["referral.v1.ChronicCareColourChanged"] * 3
    await expect_error(grpc.StatusCode.INVALID_ARGUMENT, world.stub.UpdateChronicCareStatus(
        api.UpdateChronicCareStatusRequest(patient=patient, condition_code="I10", colour=7),
        metadata=world.md(world.village)))


async def test_stats_and_sla(world, referral_app):
    accepted = await world.create()
    await world.call("AcceptReferral", world.hospital, accepted.name)
    rejected = await world.create(clinic=world.clinics[1])
    await world.call("RejectReferral", world.hospital, rejected.name, reason="超出诊疗范围")
    waiting = await world.create()
    today = date.today()
    stats = await world.stub.GetReferralStats(api.GetReferralStatsRequest(
        consortium=f"consortiums/{world.consortium}", start_date=pdate(today - timedelta(days=1)),
        end_date=pdate(today + timedelta(days=1))), metadata=world.office)
    assert stats.up_count == 3 and stats.acceptance.count == 1
    # Accepted within the test's few milliseconds: reported as such, not rounded to 0 h.
    assert 0 < stats.acceptance.median_hours < 60 / 3600
    assert abs(stats.rejected_share - 1 / 3) < 0.01 and abs(stats.kept_inside_share - 2 / 3) < 0.01
    assert {c.key: c.up_count for c in stats.by_clinic} == {world.clinics[0]: 2, world.clinics[1]: 1}
    await expect_error(grpc.StatusCode.PERMISSION_DENIED, world.stub.GetReferralStats(api.GetReferralStatsRequest(
        consortium=f"consortiums/{world.consortium}", start_date=pdate(today), end_date=pdate(today)),
        metadata=world.md(world.hospital)))

    pool = referral_app.ctx.pool
    await pool.execute("UPDATE referrals SET submitted_at = now() - interval '80 hours' WHERE referral_id = $1",
                       waiting.name.split("/")[1])
    svc = ReferralService(pool, referral_app.ctx.pii, clock=lambda: datetime.now(timezone.utc))
    assert await svc.check_sla() >= 1
    assert await svc.check_sla() == 0  # once per referral and stage
    rows = await pool.fetch("SELECT stage FROM sla_breaches WHERE referral_id = $1", waiting.name.split("/")[1])
    assert [r["stage"] for r in rows] == ["acceptance"]
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE aggregate_id = $1 AND event_type = "
                               "'referral.v1.ReferralSlaBreached'", waiting.name.split("/")[1]) == 1


async def test_catalogue_versions_and_validity_windows_are_consortium_data(world):
    parent = f"consortiums/{world.consortium}"
    v2 = await world.stub.CreateDiseaseCatalogue(api.CreateDiseaseCatalogueRequest(
        parent=parent, disease_catalogue=api.DiseaseCatalogue(description="第二版", entries=[
            api.DiseaseEntry(code="I10", display_name="原发性高血压", level=1)])), metadata=world.office)
    assert v2.version == 2
    latest = await world.stub.GetDiseaseCatalogue(api.GetDiseaseCatalogueRequest(
        name=f"{parent}/diseaseCatalogues/latest"), metadata=world.md(world.clinics[0]))
    assert latest.version == 2 and [e.code for e in latest.entries] == ["I10"]
    first = await world.stub.GetDiseaseCatalogue(api.GetDiseaseCatalogueRequest(
        name=f"{parent}/diseaseCatalogues/1"), metadata=world.md(world.clinics[0]))
    assert len(first.entries) == 4
    assert not (await world.create(code="E11.9")).catalogue_disease  # no longer in force
    error = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, world.stub.CreateDiseaseCatalogue(
        api.CreateDiseaseCatalogueRequest(parent=parent, disease_catalogue=api.DiseaseCatalogue(entries=[
            api.DiseaseEntry(code="X", display_name="", level=9)])), metadata=world.office))
    assert {"disease_catalogue.entries[0].code", "disease_catalogue.entries[0].display_name",
            "disease_catalogue.entries[0].level"} <= set(_violations(error))

    updated = await world.stub.UpdateConsortium(api.UpdateConsortiumRequest(
        consortium=api.Consortium(name=parent, exam_validities=[api.ExamValidity(exam_type="CT", validity_days=60)]),
        update_mask={"paths": ["exam_validities"]}), metadata=world.office)
    assert [(e.exam_type, e.validity_days) for e in updated.exam_validities] == [("CT", 60)]
    assert updated.display_name.startswith("测试医共体")
    needs = [rtypes.ResourceNeed(need_id="ct", exam=rtypes.ExamNeed(modality="CT"))]
    old_ct = [api.PriorResult(exam_type="CT", reference="CT-40", result_date=pdate(date.today() - timedelta(days=40)))]
    r = await world.create(needs=needs, results=old_ct)
    assert r.needs[0].covered_by_prior_result


async def test_resubmission_recognises_new_results(world):
    needs = [rtypes.ResourceNeed(need_id="ct", exam=rtypes.ExamNeed(modality="CT"))]
    r = await world.create(needs=needs)
    assert not r.needs[0].covered_by_prior_result
    await world.call("ReturnReferral", world.hospital, r.name, reason="请附近期CT")
    fresh = api.PriorResult(exam_type="CT", reference="CT-9", result_date=pdate(date.today() - timedelta(days=2)))
    r = await world.call("ResubmitReferral", world.clinics[0], r.name, additional_information="已附CT",
                         prior_results=[fresh])
    assert r.needs[0].covered_by_prior_result and r.needs[0].covering_result_reference == "CT-9"
