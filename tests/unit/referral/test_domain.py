"""The domain without a database: the state machine as a table, validators, rules."""
from datetime import date, datetime, timedelta, timezone

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from services.referral.domain import rules, validators as v
from services.referral.domain.model import (
    TRANSITIONS, Actor, Completion, Consent, Direction, Level, Need, Patient, PriorResult, Purpose, Referral,
    State, Urgency)
from tests.unit.referral import fakes

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)
CLINIC, HOSPITAL = Actor("doc", "K1"), Actor("desk", "H1")
SCHEDULER = Actor("service:scheduling", "H1", is_service=True)


def referral(state: State = State.DRAFT, consent: bool = True) -> Referral:
    patient = Patient("hash", "张*华", 1, date(1960, 1, 1), "622***********1234", "138****1234", "c", "c", "c")
    r = Referral(id="r1", consortium_id="C", direction=Direction.UP, sending_institution_id="K1",
                 receiving_institution_id="H1", hospital_id="H1", urgency=Urgency.ROUTINE, patient=patient,
                 diagnosis_code="I63.9", department="neurology", created_by="doc", created_at=NOW,
                 consent=Consent(True, "doc", NOW) if consent else None)
    r.state = state
    if state is State.SCHEDULED:
        r.booking_id = "B1"
    return r


# action -> how to call it, and who acts
CALLS = {
    "submit": (lambda r, a: r.submit(a, NOW), CLINIC),
    "accept": (lambda r, a: r.accept(a, NOW), HOSPITAL),
    "reject": (lambda r, a: r.reject(a, NOW, "无床位"), HOSPITAL),
    "return": (lambda r, a: r.return_to_sender(a, NOW, "补充材料"), HOSPITAL),
    "resubmit": (lambda r, a: r.resubmit(a, NOW, "已补充"), CLINIC),
    "cancel": (lambda r, a: r.cancel(a, NOW, "患者要求"), CLINIC),
    "withdraw_consent": (lambda r, a: r.withdraw_consent(a, NOW, "患者拒绝"), CLINIC),
    "arrive": (lambda r, a: r.record_arrival(a, NOW), HOSPITAL),
    "no_show": (lambda r, a: r.record_no_show(a, NOW), HOSPITAL),
    "complete": (lambda r, a: r.complete(a, NOW, Completion("好转"), False), HOSPITAL),
    "waitlist": (lambda r, a: r.waitlist(a, NOW, "号源已满", NOW), SCHEDULER),
    "schedule": (lambda r, a: r.schedule(a, NOW, "B1", [], NOW), SCHEDULER),
    "booking_cancelled": (lambda r, a: r.booking_cancelled(a, NOW, r.booking_id, "取消", NOW), SCHEDULER),
    "rebook": (lambda r, a: r.rebook(a, NOW, "患者要求重新预约"), HOSPITAL),
}
EVENTS = {"submit": "submitted", "resubmit": "submitted", "accept": "accepted", "reject": "rejected",
          "return": "returned", "cancel": "cancelled", "withdraw_consent": "cancelled", "arrive": "arrived",
          "no_show": "no_show", "complete": "completed", "rebook": "accepted"}


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("action", list(CALLS))
def test_transition_table(state, action):
    call, actor = CALLS[action]
    sources, target, _ = TRANSITIONS[action]
    if action == "schedule" and state is State.SCHEDULED:  # a reschedule
        sources, target = frozenset({State.SCHEDULED}), State.SCHEDULED
    r = referral(state)
    if state in sources:
        events = call(r, actor)
        assert r.state is target
        assert r.history[-1].from_state is state and r.history[-1].to_state is target
        assert r.history[-1].actor == actor.subject and r.history[-1].at == NOW
        assert [e.kind for e in events] == ([EVENTS[action]] if action in EVENTS else [])
    else:
        with pytest.raises(FailedPrecondition) as info:
            call(r, actor)
        assert info.value.reason == "ILLEGAL_TRANSITION" and r.state is state and not r.history


@pytest.mark.parametrize("action", ["accept", "reject", "return", "arrive", "no_show", "complete", "rebook"])
def test_sender_cannot_act_for_the_receiver(action):
    call, _ = CALLS[action]
    state = next(iter(TRANSITIONS[action][0]))
    with pytest.raises(PermissionDenied):
        call(referral(state), CLINIC)


def test_only_the_scheduler_moves_scheduling_states():
    with pytest.raises(PermissionDenied):
        referral(State.ACCEPTED).schedule(HOSPITAL, NOW, "B1", [], NOW)


def test_submit_needs_consent_and_reasons_are_required():
    with pytest.raises(FailedPrecondition) as info:
        referral(State.DRAFT, consent=False).submit(CLINIC, NOW)
    assert info.value.reason == "CONSENT_REQUIRED"
    for action in ("reject", "return", "cancel"):
        r = referral(State.SUBMITTED)
        with pytest.raises(InvalidArgument):
            {"reject": r.reject, "return": r.return_to_sender, "cancel": r.cancel}[action](
                HOSPITAL if action != "cancel" else CLINIC, NOW, "  ")


def test_withdrawn_consent_is_recorded():
    r = referral(State.ACCEPTED)
    r.withdraw_consent(HOSPITAL, NOW, "")
    assert r.state is State.CANCELLED and r.consent.withdrawn_at == NOW and r.consent.withdraw_reason


def test_completion_recommends_down_referral_for_clinic_diseases():
    r = referral(State.ARRIVED)
    r.complete(HOSPITAL, NOW, Completion("好转"), clinic_level_treats=True)
    assert r.down_referral_recommended


# --- validators ---------------------------------------------------------------------------


def test_id_number_check_digit():
    assert v.id_check_digit("11010519491231002") == "X"  # the GB 11643 worked example
    assert v.id_number_error("11010519491231002X", date(2026, 1, 1)) == ""
    assert v.id_number_error("11010519491231002x", date(2026, 1, 1)) == ""
    for _ in range(50):
        assert v.id_number_error(fakes.id_number(), date.today()) == ""
    good = fakes.id_number()
    wrong = good[:17] + ("0" if good[17] != "0" else "1")
    assert "校验码" in v.id_number_error(wrong, date.today())
    assert v.id_number_error("1234", date.today())
    assert "出生日期" in v.id_number_error("110105194913310021", date.today())
    future = "62240130000101001"
    assert v.id_number_error(future + v.id_check_digit(future), date.today())


def test_gender_and_age_from_id_number():
    male = fakes.id_number("19600315", male=True)
    assert v.is_male(male) and not v.is_male(fakes.id_number(male=False))
    assert v.birth_date_of(male) == date(1960, 3, 15)
    assert v.age_on(date(1960, 3, 15), date(2026, 3, 14)) == 65


@pytest.mark.parametrize("mobile,ok", [("13812341234", True), ("19912345678", True), ("12812341234", False),
                                       ("1381234123", False), ("+8613812341234", False)])
def test_mobile(mobile, ok):
    assert (v.mobile_error(mobile) == "") is ok


@pytest.mark.parametrize("code,ok", [("I10", True), ("E11.9", True), ("e11.9", True), ("S72.001", True),
                                     ("U07.1", False), ("I1", False), ("高血压", False), ("I10.", False)])
def test_icd10_shape(code, ok):
    assert (v.icd10_error(code) == "") is ok


def test_mask_name():
    assert v.mask_name("张三") == "张*" and v.mask_name("欧阳小明") == "欧**明"


# --- rules ----------------------------------------------------------------------------------

CATALOGUE = rules.Catalogue(1, [rules.CatalogueEntry("I10", "原发性高血压", Level.VILLAGE),
                                rules.CatalogueEntry("E11", "2型糖尿病", Level.TOWNSHIP),
                                rules.CatalogueEntry("E11.9", "2型糖尿病不伴并发症", Level.VILLAGE)])


def test_catalogue_matches_most_specific_entry():
    assert CATALOGUE.find("E11.9").level is Level.VILLAGE
    assert CATALOGUE.find("E11.2").level is Level.TOWNSHIP
    assert CATALOGUE.find("I63.9") is None


@pytest.mark.parametrize("code,sender,needs_reason,recommended", [
    ("E11.2", Level.TOWNSHIP, True, True), ("E11.2", Level.VILLAGE, False, True),
    ("I10", Level.VILLAGE, True, True), ("I63.9", Level.TOWNSHIP, False, False)])
def test_justification_rule(code, sender, needs_reason, recommended):
    verdict = rules.evaluate(CATALOGUE, code, Direction.UP, sender, Level.HOSPITAL)
    assert verdict.justification_required is needs_reason
    assert verdict.allowed is not needs_reason
    assert verdict.down_referral_recommended is recommended
    assert rules.evaluate(CATALOGUE, code, Direction.UP, sender, Level.HOSPITAL, "血糖难控").allowed


def test_direction_must_match_levels():
    assert rules.check_direction(Direction.UP, Level.TOWNSHIP, Level.HOSPITAL) == ""
    assert rules.check_direction(Direction.UP, Level.HOSPITAL, Level.TOWNSHIP)
    assert rules.check_direction(Direction.DOWN, Level.TOWNSHIP, Level.TOWNSHIP)


def test_prior_results_cover_exams_within_their_window():
    today = date(2026, 11, 23)
    validity = {"CT": 30, "BLOOD_ROUTINE": 7}
    needs = [Need("ct", "exam", modality="CT", body_part="head"), Need("ct2", "exam", modality="CT", body_part="chest"),
             Need("blood", "exam", modality="BLOOD_ROUTINE"), Need("mri", "exam", modality="MRI"),
             Need("c", "consultation", department="neurology")]
    results = [PriorResult("CT", today - timedelta(days=30), "K1", "CT-1", body_part="head"),
               PriorResult("BLOOD_ROUTINE", today - timedelta(days=8), "K1", "B-1"),
               PriorResult("MRI", today + timedelta(days=1), "K1", "M-1"),
               PriorResult("US", today, "K1", "U-1")]
    rules.recognise_results(needs, results, validity, today)
    assert [n.covered_by_prior_result for n in needs] == [True, False, False, False, False]
    assert needs[0].covering_result_reference == "CT-1"
    assert [r.valid for r in results] == [True, False, False, False]
    rules.recognise_results(needs[:1], [PriorResult("CT", today - timedelta(days=31), "K1", "CT-0")], validity, today)
    assert not needs[0].covered_by_prior_result


def test_billing_continuity():
    bed = [Need("bed", "admission", department="neurology", expected_nights=5)]
    up = rules.billing_terms(Direction.UP, Purpose.TREATMENT, bed)
    assert up.deductible_carried and not up.deductible_waived
    assert not rules.billing_terms(Direction.UP, Purpose.DIAGNOSIS, [Need("c", "consultation")]).deductible_carried
    down = rules.billing_terms(Direction.DOWN, Purpose.REHABILITATION, [])
    assert down.deductible_waived and not down.deductible_carried
    assert not rules.billing_terms(Direction.DOWN, Purpose.CHRONIC_CARE, []).deductible_waived


@pytest.mark.parametrize("previous,colour,level,move", [
    (None, rules.Colour.GREEN, Level.VILLAGE, None),
    (rules.Colour.GREEN, rules.Colour.YELLOW, Level.VILLAGE, Direction.UP),
    (rules.Colour.GREEN, rules.Colour.RED, Level.VILLAGE, Direction.UP),
    (rules.Colour.RED, rules.Colour.GREEN, Level.HOSPITAL, Direction.DOWN),
    (rules.Colour.YELLOW, rules.Colour.YELLOW, Level.VILLAGE, None),
    (rules.Colour.RED, rules.Colour.YELLOW, Level.TOWNSHIP, None)])
def test_colour_change_proposes_a_level(previous, colour, level, move):
    assert rules.proposed_move(previous, colour, level) is move


def test_rebook_clears_the_old_booking_and_needs_a_reason():
    r = referral(State.NO_SHOW)
    first_accepted, first_scheduled = NOW - timedelta(days=8), NOW - timedelta(days=7)
    r.booking_id, r.waitlist_reason = "B1", "x"
    r.accepted_at, r.scheduled_at = first_accepted, first_scheduled
    with pytest.raises(InvalidArgument):
        r.rebook(HOSPITAL, NOW, " ")
    later = NOW + timedelta(days=1)
    [event] = r.rebook(HOSPITAL, later, "天气原因")
    assert event.kind == "accepted" and r.state is State.ACCEPTED and r.history[-1].reason == "天气原因"
    assert (r.booking_id, r.scheduled_items, r.waitlist_reason) == ("", [], "")
    # The indicators keep the first acceptance and booking (the rebook is in the history).
    assert (r.accepted_at, r.scheduled_at, r.history[-1].at) == (first_accepted, first_scheduled, later)


@pytest.mark.parametrize("state", list(State))
def test_only_the_sender_edits_a_draft_or_returned_referral(state):
    r = referral(state)
    if state in (State.DRAFT, State.RETURNED):
        r.edit(CLINIC, NOW)
        with pytest.raises(PermissionDenied):
            r.edit(HOSPITAL, NOW)
    else:
        with pytest.raises(FailedPrecondition) as info:
            r.edit(CLINIC, NOW)
        assert info.value.reason == "NOT_EDITABLE"
    assert r.state is state
