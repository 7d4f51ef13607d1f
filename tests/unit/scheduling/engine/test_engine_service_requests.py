"""Engine requests of the service: several consultations per referral, referrals with
nothing to book, ward-level limits; tiny problems with the optimum worked out by hand."""

from __future__ import annotations

from scheduling_engine_support import bed, check_valid, exam, referral, slot

from services.scheduling.engine import (
    AdmissionNeed,
    ConsultationNeed,
    Department,
    ExamNeed,
    Gender,
    ItemKind,
    Problem,
    ReasonCode,
    Room,
    solve,
    solve_greedy,
)

CARD = ConsultationNeed("CARD")
NEURO = ConsultationNeed("NEURO", item_id="consultation-neuro")


def _both(p: Problem):
    for s in (solve(p), solve_greedy(p)):
        check_valid(p, s)
        yield s


def test_two_consultations_are_both_booked_after_the_exam_they_read_on_one_trip():
    # Day 0: CT 07:00-07:20; cardiology at 08:00 and neurology at 08:00 (same time, so
    # one of them must take neurology's 09:00 slot); day 1 has the same, unused.
    r = referral("r", consultation=CARD, extra_consultations=(NEURO,), exams=(ExamNeed("ct", "CT"),))
    p = Problem(
        7,
        (r,),
        (slot("c0", 0, 480), slot("n0", 0, 480, department="NEURO"), slot("n0b", 0, 540, department="NEURO"),
         slot("c1", 1, 480), slot("n1", 1, 600, department="NEURO")),
        (exam("e0", 0, 420), exam("e1", 1, 420)),
    )
    for s in _both(p):
        items = s.items_of("r")
        assert set(items) == {"consultation", "consultation-neuro", "ct"}
        assert (items["ct"].resource_id, items["consultation"].resource_id, items["consultation-neuro"].resource_id) == ("e0", "c0", "n0b")
        assert s.terms["trips"] == p.config.weights.trip_cost(50.0) and s.terms["wait"] == 0


def test_an_exam_read_by_one_consultation_may_follow_the_other():
    # The CT is read by neurology only: cardiology 08:00, CT 09:00, neurology 10:00 on day 0.
    r = referral("r", consultation=CARD, extra_consultations=(NEURO,),
                 exams=(ExamNeed("ct", "CT", read_by=("consultation-neuro",)),))
    p = Problem(7, (r,), (slot("c0", 0, 480), slot("n0", 0, 600, department="NEURO")), (exam("e0", 0, 540),))
    for s in _both(p):
        assert {a.resource_id for a in s.assignments} == {"c0", "n0", "e0"}
    # Read by both: the CT at 09:00 cannot precede cardiology at 08:00.
    strict = Problem(7, (r.__class__(**{**r.__dict__, "exams": (ExamNeed("ct", "CT"),)}),), p.outpatient_slots, p.exam_slots)
    for s in _both(strict):
        assert s.unplaced[0].reason == ReasonCode.ORDER_INFEASIBLE


def test_two_consultations_keep_the_minimum_gap():
    # One cardiology and one neurology slot at the same minute: not both.
    r = referral("r", consultation=CARD, extra_consultations=(NEURO,))
    p = Problem(7, (r,), (slot("c0", 0, 480), slot("n0", 0, 480, department="NEURO")))
    for s in _both(p):
        assert s.placed_referral_ids() == frozenset()
        assert s.unplaced[0].reason == ReasonCode.ORDER_INFEASIBLE


def test_a_referral_with_nothing_to_book_is_placed_not_waitlisted():
    covered = referral("covered", exams=(ExamNeed("ct", "CT", recognised_prior_result=True),))
    busy = referral("busy", consultation=CARD)
    p = Problem(7, (covered, busy), (slot("c0", 0),))
    for s in _both(p):
        assert s.placed_referral_ids() == {"covered", "busy"}
        assert s.placed_without_items == ("covered",)
        assert not s.items_of("covered") and not s.unplaced
        assert s.terms["unplaced"] == 0


def test_two_wards_of_one_department_keep_their_own_age_limits():
    # Department MED has an adult ward (>= 14) and a children's ward (<= 14); the
    # admission names the department; each patient lands in the ward that admits them.
    wards = (Department("MED-adult", min_age=14), Department("MED-child", max_age=14))
    rooms = (Room("ra", "MED", 2, ward_id="MED-adult"), Room("rc", "MED", 2, ward_id="MED-child"))
    beds = (bed("ba", "ra"), bed("bc", "rc"))
    child = referral("child", admission=AdmissionNeed(2, department="MED"), patient_age=8, patient_gender=Gender.MALE)
    adult = referral("adult", admission=AdmissionNeed(2, department="MED"), patient_age=60, patient_gender=Gender.MALE)
    p = Problem(7, (child, adult), departments=wards, rooms=rooms, beds=beds)
    for s in _both(p):
        assert s.items_of("child")["admission"].resource_id == "bc"
        assert s.items_of("adult")["admission"].resource_id == "ba"
        assert all(a.kind == ItemKind.ADMISSION and a.day == 0 for a in s.assignments)
    # Without the ward id, both rooms would share MED's (absent) limits; with only the
    # children's bed left, the adult waits for a matching bed.
    only_child = Problem(7, (adult,), departments=wards, rooms=rooms[1:], beds=beds[1:])
    for s in _both(only_child):
        assert s.unplaced[0].reason == ReasonCode.NO_MATCHING_BED


def test_the_default_solve_is_reproducible_for_a_seed_and_improves_on_greedy():
    from dataclasses import replace as dc_replace

    from benchmarks.scheduler.generator import COUNTY, generate_consortium

    from services.scheduling.engine import SolverParams

    [p] = generate_consortium(COUNTY, 120, seed=5)
    params = SolverParams(random_seed=7, deterministic_time_limit=0.6, max_options_per_item=30, lns_step_budget=0.05)
    first, second = solve(p, params), solve(p, params)
    assert any("LNS steps" in n for n in first.notes)
    assert dc_replace(first, solve_seconds=0.0) == dc_replace(second, solve_seconds=0.0)
    check_valid(p, first)
    assert first.objective < solve_greedy(p).objective
