"""Referral snapshots as the engine's Referral (no database)."""
from datetime import date, datetime

from common.v1 import types_pb2
from referral.v1 import types_pb2 as rtypes
from services.scheduling import engine
from services.scheduling.domain import calendar
from services.scheduling.service_layer.engine_adapter import Horizon, referral_demand


def _snapshot(**kw) -> rtypes.ReferralSnapshot:
    return rtypes.ReferralSnapshot(
        referral_id="R1", hospital_id="H1", sending_institution_id="C1", urgency=types_pb2.URGENCY_URGENT,
        clinic_distance_km=170, patient=rtypes.PatientSummary(gender=rtypes.GENDER_MALE, age_years=71),
        needs=[rtypes.ResourceNeed(need_id="c", consultation=rtypes.ConsultationNeed(department="neurology",
                                                                                      expert=True, doctor_id="D9")),
               rtypes.ResourceNeed(need_id="mri", exam=rtypes.ExamNeed(modality="MRI")),
               rtypes.ResourceNeed(need_id="ct", exam=rtypes.ExamNeed(modality="CT"), covered_by_prior_result=True),
               rtypes.ResourceNeed(need_id="a", admission=rtypes.AdmissionNeed(
                   department="neurology", expected_nights=0, required_equipment=["oxygen"]))], **kw)


def test_snapshot_maps_to_engine_referral():
    horizon = Horizon(date(2026, 12, 1), 28)
    accepted = calendar.at(date(2026, 11, 29), 600)
    demand = referral_demand(_snapshot(), accepted, horizon, {"MRI": 1})
    r = demand.referral
    assert r.urgency == engine.Urgency.URGENT and r.accepted_day == -2 and r.patient_age == 71
    assert r.consultation.preferred_title == engine.Title.EXPERT and r.consultation.preferred_doctor_id == "D9"
    assert [(e.item_id, e.preparation_days, e.recognised_prior_result) for e in r.exams] == \
        [("mri", 1, False), ("ct", 0, True)]
    assert r.admission.nights == 1 and r.admission.required_equipment == frozenset({"oxygen"})
    assert r.available_days == frozenset(range(28))
    assert demand.need_of_item == {"consultation": "c", "mri": "mri", "ct": "ct", "admission": "a"}
    assert demand.gender == "M"


def test_available_dates_outside_the_horizon_are_dropped():
    horizon = Horizon(date(2026, 12, 1), 28)
    dates = [types_pb2.Date(year=2026, month=12, day=d) for d in (1, 3)] + [types_pb2.Date(year=2027, month=3, day=1)]
    demand = referral_demand(_snapshot(available_dates=dates), datetime.now(calendar.LOCAL), horizon, {})
    assert demand.referral.available_days == frozenset({0, 2})
