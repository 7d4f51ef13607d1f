"""Proto <-> domain mapping. The API shows identifiers masked; events carry none."""
from __future__ import annotations

from datetime import date, datetime, timezone

from google.protobuf import timestamp_pb2

from common.v1 import types_pb2 as common_pb2
from referral.v1 import events_pb2, referral_service_pb2 as api, types_pb2
from services.common.pii import MOBILE_CONTEXT, PiiCipher
from services.referral.domain import model
from services.referral.domain.model import Referral
from services.referral.domain.validators import age_on

PREFIX = "referrals/"


def referral_name(referral_id: str) -> str:
    return PREFIX + referral_id


def ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value.astimezone(timezone.utc))
    return out


def from_ts(value: timestamp_pb2.Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=timezone.utc)


def pdate(value: date) -> common_pb2.Date:
    return common_pb2.Date(year=value.year, month=value.month, day=value.day)


def from_pdate(value: common_pb2.Date) -> date | None:
    try:
        return date(value.year, value.month, value.day)
    except ValueError:
        return None


def need_proto(n: model.Need) -> types_pb2.ResourceNeed:
    out = types_pb2.ResourceNeed(need_id=n.need_id, covered_by_prior_result=n.covered_by_prior_result,
                                 covering_result_reference=n.covering_result_reference)
    if n.kind == "consultation":
        out.consultation.CopyFrom(types_pb2.ConsultationNeed(department=n.department, doctor_id=n.doctor_id,
                                                             expert=n.expert))
    elif n.kind == "exam":
        out.exam.CopyFrom(types_pb2.ExamNeed(modality=n.modality, body_part=n.body_part))
    elif n.kind == "admission":
        out.admission.CopyFrom(types_pb2.AdmissionNeed(
            department=n.department, expected_nights=n.expected_nights,
            required_equipment=n.required_equipment, preferred_equipment=n.preferred_equipment))
    return out


def need_from_proto(p: types_pb2.ResourceNeed, index: int) -> model.Need:
    kind = p.WhichOneof("kind") or ""
    need = model.Need(need_id=p.need_id or f"n{index + 1}", kind=kind)
    if kind == "consultation":
        need.department, need.doctor_id, need.expert = p.consultation.department, p.consultation.doctor_id, \
            p.consultation.expert
    elif kind == "exam":
        need.modality, need.body_part = p.exam.modality.strip().upper(), p.exam.body_part
    elif kind == "admission":
        need.department, need.expected_nights = p.admission.department, p.admission.expected_nights
        need.required_equipment = list(p.admission.required_equipment)
        need.preferred_equipment = list(p.admission.preferred_equipment)
    return need


def result_proto(r: model.PriorResult) -> api.PriorResult:
    return api.PriorResult(exam_type=r.exam_type, body_part=r.body_part, result_date=pdate(r.result_date),
                           institution_id=r.institution_id, reference=r.reference, summary=r.summary, valid=r.valid)


def result_from_proto(p: api.PriorResult) -> model.PriorResult:
    return model.PriorResult(exam_type=p.exam_type.strip().upper(), result_date=from_pdate(p.result_date)
                             or date.min, institution_id=p.institution_id, reference=p.reference,
                             body_part=p.body_part, summary=p.summary)


def consent_proto(c: model.Consent | None) -> api.Consent | None:
    if c is None:
        return None
    return api.Consent(given=c.given, recorded_by=c.recorded_by, record_time=ts(c.recorded_at), method=c.method,
                       withdraw_time=ts(c.withdrawn_at), withdraw_reason=c.withdraw_reason)


def billing_proto(b: model.Billing | None) -> types_pb2.BillingContinuity | None:
    if b is None:
        return None
    return types_pb2.BillingContinuity(episode_id=b.episode_id, deductible_paid_fen=b.deductible_paid_fen,
                                       deductible_carried=b.deductible_carried, deductible_waived=b.deductible_waived,
                                       receiving_level=b.receiving_level)


def transition_proto(t: model.Transition) -> api.StateTransition:
    return api.StateTransition(from_state=int(t.from_state or 0), to_state=int(t.to_state), actor=t.actor,
                               actor_institution_id=t.actor_institution_id, reason=t.reason,
                               transition_time=ts(t.at))


def referral_proto(r: Referral, today: date) -> api.Referral:
    p = r.patient
    out = api.Referral(
        name=referral_name(r.id), direction=int(r.direction), state=int(r.state),
        sending_institution_id=r.sending_institution_id, receiving_institution_id=r.receiving_institution_id,
        hospital_id=r.hospital_id, consortium_id=r.consortium_id, urgency=int(r.urgency),
        green_channel=r.green_channel,
        patient=api.PatientView(patient_id=p.patient_id, name_masked=p.name_masked,
                                id_number_masked=p.id_number_masked, mobile_masked=p.mobile_masked,
                                gender=p.gender, age_years=age_on(p.birth_date, today),
                                birth_date=pdate(p.birth_date)),
        diagnosis_code=r.diagnosis_code, diagnosis_text=r.diagnosis_text, department=r.department,
        clinical_summary=r.clinical_summary, justification=r.justification, purpose=int(r.purpose),
        needs=[need_proto(n) for n in r.needs], available_dates=[pdate(d) for d in r.available_dates],
        prior_results=[result_proto(x) for x in r.prior_results], consent=consent_proto(r.consent),
        billing=billing_proto(r.billing), catalogue_disease=r.catalogue_disease,
        down_referral_recommended=r.down_referral_recommended,
        origin_referral=referral_name(r.origin_referral_id) if r.origin_referral_id else "",
        care_plan=r.care_plan, follow_up_dates=[pdate(d) for d in r.follow_up_dates], booking_id=r.booking_id,
        scheduled_items=[api.ScheduledItem(need_id=i.need_id, start_time=ts(i.start), end_time=ts(i.end),
                                           place=i.place, department=i.department, modality=i.modality)
                         for i in r.scheduled_items],
        waitlist_reason=r.waitlist_reason, history=[transition_proto(t) for t in r.history],
        create_time=ts(r.created_at), update_time=ts(r.updated_at), submit_time=ts(r.submitted_at),
        accept_time=ts(r.accepted_at), version=r.version, clinic_distance_km=r.clinic_distance_km,
        additional_information=r.additional_information)
    if r.completion is not None:
        c = r.completion
        out.completion.CopyFrom(api.Completion(
            findings=c.findings, treatment_summary=c.treatment_summary, recommendations=c.recommendations,
            down_referral=referral_name(c.down_referral_id) if c.down_referral_id else ""))
    return out


def snapshot(r: Referral, pii: PiiCipher, today: date) -> types_pb2.ReferralSnapshot:
    p = r.patient
    # The mobile is re-sealed under the shared event context so that notify can open it;
    # at rest here it stays bound to its own column.
    mobile = pii.decrypt(p.mobile_ciphertext, "referral.mobile")
    return types_pb2.ReferralSnapshot(
        referral_id=r.id, direction=int(r.direction), sending_institution_id=r.sending_institution_id,
        receiving_institution_id=r.receiving_institution_id, hospital_id=r.hospital_id, urgency=int(r.urgency),
        green_channel=r.green_channel, state=int(r.state),
        patient=types_pb2.PatientSummary(patient_id=p.patient_id, name_masked=p.name_masked, gender=p.gender,
                                         age_years=age_on(p.birth_date, today),
                                         mobile_ciphertext=pii.encrypt(mobile, MOBILE_CONTEXT), wechat_openid=p.wechat_openid),
        needs=[need_proto(n) for n in r.needs], available_dates=[pdate(d) for d in r.available_dates],
        episode_id=r.billing.episode_id if r.billing else "", clinic_distance_km=r.clinic_distance_km,
        department=r.department, purpose=int(r.purpose), billing=billing_proto(r.billing),
        diagnosis_code=r.diagnosis_code)


def event_proto(event: model.Event, r: Referral, pii: PiiCipher, today: date):
    snap = snapshot(r, pii, today)
    kind = event.kind
    if kind == "submitted":
        return events_pb2.ReferralSubmitted(referral=snap)
    if kind == "accepted":
        return events_pb2.ReferralAccepted(referral=snap)
    if kind == "rejected":
        return events_pb2.ReferralRejected(referral=snap, reason=event.reason)
    if kind == "returned":
        return events_pb2.ReferralReturned(referral=snap, reason=event.reason)
    if kind == "cancelled":
        return events_pb2.ReferralCancelled(referral=snap, reason=event.reason)
    if kind == "arrived":
        return events_pb2.PatientArrived(referral=snap)
    if kind == "no_show":
        return events_pb2.PatientNoShow(referral=snap)
    if kind == "completed":
        follow = event.data.get("first_follow_up")
        return events_pb2.ReferralCompleted(referral=snap, down_referral_id=event.data.get("down_referral_id", ""),
                                            first_follow_up_date=pdate(follow) if follow else None)
    if kind == "down_referral_proposed":
        follow = event.data.get("first_follow_up")
        return events_pb2.DownReferralProposed(
            referral=snap, origin_referral_id=event.data["origin_referral_id"],
            first_follow_up_date=pdate(follow) if follow else None,
            clinic_name=event.data.get("clinic_name", ""), clinic_address=event.data.get("clinic_address", ""))
    if kind == "sla_breached":
        return events_pb2.ReferralSlaBreached(referral=snap, stage=event.data["stage"],
                                              overdue_seconds=int(event.data["overdue_seconds"]))
    raise ValueError(f"no proto for event {kind!r}")


def institution_proto(i: model.Institution) -> api.Institution:
    return api.Institution(name=f"consortiums/{i.consortium_id}/institutions/{i.institution_id}",
                           display_name=i.display_name, level=int(i.level), lead_hospital_id=i.lead_hospital_id,
                           parent_institution_id=i.parent_institution_id, distance_km=i.distance_km,
                           address=i.address)


def consortium_proto(c: model.ConsortiumSettings) -> api.Consortium:
    return api.Consortium(
        name=f"consortiums/{c.consortium_id}", display_name=c.display_name,
        emergency_acceptance_hours=c.emergency_acceptance_hours, urgent_acceptance_hours=c.urgent_acceptance_hours,
        routine_acceptance_hours=c.routine_acceptance_hours,
        emergency_scheduling_hours=c.emergency_scheduling_hours, urgent_scheduling_hours=c.urgent_scheduling_hours,
        routine_scheduling_hours=c.routine_scheduling_hours,
        exam_validities=[api.ExamValidity(exam_type=k, validity_days=v) for k, v in sorted(c.exam_validity.items())])
