"""Early opening of reserved slots and exam preparation / contraindication rules (pure)."""
from datetime import date

from common.v1 import types_pb2
from referral.v1 import types_pb2 as rtypes
from services.scheduling.domain import exam_rules
from services.scheduling.domain.policy import ReservationPolicy
from services.scheduling.service_layer.engine_adapter import Horizon, referral_demand


def test_clinics_book_early_release_days_before_the_public_release():
    p = ReservationPolicy("H1", "outpatient", early_release_days=14)
    today = date(2026, 3, 1)
    assert p.clinic_window_days == 14 and p.last_open_day(today) == date(2026, 3, 15)
    assert p.is_open(date(2026, 3, 15), today) and not p.is_open(date(2026, 3, 16), today)
    assert p.opens_on(date(2026, 3, 16)) == date(2026, 3, 2)
    public7 = ReservationPolicy("H1", "exam", early_release_days=14, public_release_days=7)
    assert public7.last_open_day(today) == date(2026, 3, 22)


CT = [("CT", True, [], ["碘造影剂过敏", "妊娠"]), ("MRI", False, [], ["心脏起搏器"]),
      ("ENDOSCOPY", False, ["coagulation"], []), ("US", False, [], [])]


def test_modality_rules_union_over_channels():
    rules = exam_rules.modality_rules(CT + [("CT", False, [], [])])
    assert rules["CT"].required_results == {exam_rules.KIDNEY_FUNCTION}
    assert set(rules["CT"].contraindications) == {exam_rules.CONTRAST_ALLERGY, exam_rules.PREGNANCY}
    assert rules["ENDOSCOPY"].required_results == {exam_rules.COAGULATION}
    assert rules["MRI"].contraindications == {exam_rules.PACEMAKER: "心脏起搏器"}
    assert rules["US"] == exam_rules.ModalityRules()


def _snap(*needs, diagnosis="I10", urgency=types_pb2.URGENCY_ROUTINE):
    return rtypes.ReferralSnapshot(referral_id="R1", hospital_id="H1", sending_institution_id="C1", urgency=urgency,
                                   diagnosis_code=diagnosis, needs=list(needs))


def _exam(need_id, modality, covered=False):
    return rtypes.ResourceNeed(need_id=need_id, exam=rtypes.ExamNeed(modality=modality), covered_by_prior_result=covered,
                               covering_result_reference="LIS-1" if covered else "")


H = Horizon(date(2026, 3, 1), 28)
NOW = H.start


def test_unmet_kidney_function_gives_a_preparation_day_and_an_instruction():
    rules = exam_rules.modality_rules(CT)
    d = referral_demand(_snap(_exam("ct", "CT"), _exam("endo", "ENDOSCOPY")), NOW, H, {}, rules=rules)
    assert [(e.item_id, e.preparation_days) for e in d.referral.exams] == [("ct", 1), ("endo", 1)]
    assert "肾功能" in d.verdict.instruction("ct") and "凝血功能" in d.verdict.instruction("endo")
    assert not d.contraindicated
    # The same exam with a recognised creatinine (and coagulation) result: nothing to add.
    met = referral_demand(_snap(_exam("ct", "CT"), _exam("cr", "CREATININE", covered=True), _exam("endo", "ENDOSCOPY"),
                                _exam("inr", "PT_INR", covered=True)), NOW, H, {"CT": 0}, rules=rules)
    assert [(e.item_id, e.preparation_days) for e in met.referral.exams if not e.recognised_prior_result] == \
        [("ct", 0), ("endo", 0)]
    assert met.verdict.unmet == {} and met.verdict.instruction("ct") == ""
    # An emergency has its labs done on the spot: instruction, no delay.
    urgent = referral_demand(_snap(_exam("ct", "CT"), urgency=types_pb2.URGENCY_EMERGENCY), NOW, H, {}, rules=rules)
    assert urgent.referral.exams[0].preparation_days == 0 and urgent.verdict.instruction("ct")


def test_pacemaker_contraindicates_mri_only():
    rules = exam_rules.modality_rules(CT)
    assert exam_rules.conditions_of_diagnosis("Z95.0") == {exam_rules.PACEMAKER}
    d = referral_demand(_snap(_exam("mri", "MRI"), _exam("us", "US"), diagnosis="Z95.0"), NOW, H, {}, rules=rules)
    assert d.contraindicated and d.verdict.contraindicated == (("mri", "MRI", exam_rules.PACEMAKER, "心脏起搏器"),)
    assert "磁共振（MRI）检查（患者体内植入心脏起搏器，为该检查禁忌）" in d.verdict.contraindication_text()
    # Covered by a prior result: nothing is booked, so nothing is contraindicated.
    covered = referral_demand(_snap(_exam("mri", "MRI", covered=True), diagnosis="Z95.0"), NOW, H, {}, rules=rules)
    assert not covered.contraindicated
    pregnant = referral_demand(_snap(_exam("ct", "CT"), diagnosis="O26.9"), NOW, H, {}, rules=rules)
    assert pregnant.verdict.contraindicated[0][2] == exam_rules.PREGNANCY


def test_modalities_are_named_in_chinese_for_clinics_and_unknown_ones_keep_their_code():
    assert [exam_rules.modality_text(m) for m in ("ENDOSCOPY", "us", "PET")] == ["胃肠镜", "超声", "PET"]
