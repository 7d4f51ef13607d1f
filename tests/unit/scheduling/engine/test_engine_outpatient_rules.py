"""Hard rules and soft terms of consultations and exams, on problems solved by hand."""

from __future__ import annotations

from dataclasses import replace

from scheduling_engine_support import check_valid, exam, referral, slot

from services.scheduling.engine import (
    ClinicQuota,
    Config,
    ConsultationNeed,
    ExamNeed,
    ItemKind,
    Pool,
    Problem,
    ReasonCode,
    Status,
    Title,
    Urgency,
    solve,
    solve_greedy,
)

CARD = ConsultationNeed("CARD")
CT = (ExamNeed("ct", "CT"),)


def test_the_urgent_referral_gets_the_only_reserved_place():
    p = Problem(7, (referral("routine", consultation=CARD), referral("urgent", Urgency.URGENT, consultation=CARD)), (slot("s0", 0),))
    s = solve(p)
    check_valid(p, s)
    assert s.status == Status.OPTIMAL
    assert s.placed_referral_ids() == {"urgent"}
    assert s.unplaced_by_id()["routine"].reason == ReasonCode.CAPACITY_TAKEN
    assert s.bound == s.objective


def test_wait_is_weighted_by_urgency():
    p = Problem(7, (referral("routine", consultation=CARD), referral("urgent", Urgency.URGENT, consultation=CARD)), (slot("s0", 0), slot("s1", 1)))
    s = solve(p)
    assert s.items_of("urgent")["consultation"].day == 0
    assert s.items_of("routine")["consultation"].day == 1
    assert s.terms["wait"] == p.config.weights.wait_per_day_routine


def test_exams_come_before_the_consultation_with_the_minimum_gap():
    # Day 0: the exam slot is after the consultation; day 1 exam 08:00-08:20, consultation
    # 08:40 (too close for a 30 minute gap) or 10:00.
    p = Problem(
        7,
        (referral("r", consultation=CARD, exams=CT),),
        (slot("c0", 0, 480), slot("c1a", 1, 520), slot("c1b", 1, 600)),
        (exam("e0", 0, 540), exam("e1", 1, 480)),
    )
    s = solve(p)
    items = s.items_of("r")
    assert (items["ct"].resource_id, items["consultation"].resource_id) == ("e1", "c1b")
    too_close = replace(p, outpatient_slots=p.outpatient_slots[:2], exam_slots=p.exam_slots[1:])
    assert solve(too_close).unplaced[0].reason == ReasonCode.ORDER_INFEASIBLE
    assert solve(replace(too_close, config=Config(min_gap_minutes=10))).items_of("r")["consultation"].resource_id == "c1a"


def test_an_exam_after_the_consultation_follows_it():
    follow_up = (ExamNeed("us", "US", before_consultation=False),)
    p = Problem(7, (referral("r", consultation=CARD, exams=follow_up),), (slot("c0", 0, 600),), (exam("u-early", 0, 480, modality="US"), exam("u-late", 0, 700, modality="US")))
    assert solve(p).items_of("r")["us"].resource_id == "u-late"


def test_items_are_bundled_into_one_trip_where_the_greedy_desk_books_two():
    p = Problem(7, (referral("r", consultation=CARD, exams=CT),), (slot("c2", 2, 600),), (exam("e0", 0), exam("e2", 2)))
    s = solve(p)
    assert s.items_of("r")["ct"].day == 2
    assert s.terms["trips"] == p.config.weights.trip_cost(50)
    g = solve_greedy(p)
    assert g.items_of("r")["ct"].day == 0
    assert g.terms["trips"] == 2 * p.config.weights.trip_cost(50)


def test_the_one_day_trip_goes_to_the_farthest_clinic():
    both = dict(consultation=CARD, exams=CT)
    p = Problem(
        7,
        (referral("near", clinic_id="near", clinic_distance_km=20, **both), referral("far", clinic_id="far", clinic_distance_km=170, **both)),
        (slot("c1", 1, 600, reserved=2),),
        (exam("e0", 0), exam("e1", 1)),
    )
    s = solve(p)
    assert s.items_of("far")["ct"].day == 1
    assert s.items_of("near")["ct"].day == 0


def test_deadlines_by_urgency():
    late = (slot("s3", 3),)
    urgent = Problem(7, (referral("u", Urgency.URGENT, consultation=CARD),), late)
    s = solve(urgent)
    assert s.unplaced_by_id()["u"].reason == ReasonCode.NO_CONSULTATION_SLOT_BEFORE_DEADLINE
    why = s.unplaced_by_id()["u"]
    assert why.deadline_day == 2 and "deadline (day 2)" in why.text_en and "截止日（第2天）前" in why.text_zh
    assert "截止日（11月28日）前" in why.text("zh", day=lambda d: f"11月{26 + d}日")
    assert solve(replace(urgent, referrals=(referral("r", consultation=CARD),))).placed_referral_ids() == {"r"}
    emergency = Problem(7, (referral("e", Urgency.EMERGENCY, accepted=1, consultation=CARD),), (slot("d1", 1), slot("d2", 2)))
    assert solve(emergency).items_of("e")["consultation"].resource_id == "d1"
    assert not solve(replace(emergency, outpatient_slots=(slot("d2", 2),))).placed_referral_ids()


def test_a_referral_waiting_past_its_deadline_gets_its_window_again_from_today():
    """An emergency accepted yesterday evening, after the last session, goes to this
    morning's; an urgent one still within its window keeps it."""
    today = (slot("t0", 0),)
    overdue = Problem(7, (referral("e", Urgency.EMERGENCY, accepted=-1, consultation=CARD),), today)
    assert solve(overdue).items_of("e")["consultation"].resource_id == "t0"
    assert solve_greedy(overdue).placed_referral_ids() == {"e"}
    long_ago = Problem(7, (referral("u", Urgency.URGENT, accepted=-3, consultation=CARD),), (slot("s2", 2),))
    assert solve(long_ago).placed_referral_ids() == {"u"}
    assert not solve(replace(long_ago, outpatient_slots=(slot("s3", 3),))).placed_referral_ids()
    in_window = Problem(7, (referral("w", Urgency.URGENT, accepted=-1, consultation=CARD),), (slot("s2", 2),))
    s = solve(in_window)
    assert s.unplaced_by_id()["w"].reason == ReasonCode.NO_CONSULTATION_SLOT_BEFORE_DEADLINE


def test_a_window_closing_before_the_hospitals_next_open_day_counts_from_that_day():
    """Accepted after today's last slot began (or on a Saturday): an emergency goes to the
    next open day's first place at once; a window still reaching that day keeps its end."""
    tonight = Problem(7, (referral("e", Urgency.EMERGENCY, consultation=CARD),), (slot("d1", 1), slot("d2", 2)),
                      first_open_day=1)
    assert solve(tonight).items_of("e")["consultation"].resource_id == "d1"
    assert solve_greedy(tonight).placed_referral_ids() == {"e"}
    assert not solve(replace(tonight, first_open_day=0)).placed_referral_ids()
    weekend = replace(tonight, outpatient_slots=(slot("d2", 2), slot("d3", 3)), first_open_day=2)
    assert solve(weekend).items_of("e")["consultation"].resource_id == "d2"
    urgent = Problem(7, (referral("u", Urgency.URGENT, consultation=CARD),), (slot("d3", 3),), first_open_day=1)
    assert solve(urgent).unplaced_by_id()["u"].deadline_day == 2


def test_the_patients_available_days_are_respected():
    p = Problem(7, (referral("r", days=frozenset({2}), consultation=CARD),), (slot("s0", 0), slot("s2", 2)))
    assert solve(p).items_of("r")["consultation"].day == 2
    none = replace(p, referrals=(referral("u", Urgency.URGENT, days=frozenset({5}), consultation=CARD),))
    assert solve(none).unplaced[0].reason == ReasonCode.NO_PATIENT_DAY_BEFORE_DEADLINE


def test_preparation_lead_days():
    prep = (ExamNeed("endo", "ENDO", preparation_days=2),)
    p = Problem(7, (referral("r", consultation=CARD, exams=prep),), (slot("c3", 3, 600),), (exam("n0", 0, modality="ENDO"), exam("n2", 2, modality="ENDO")))
    assert solve(p).items_of("r")["endo"].resource_id == "n2"


def test_a_recognised_prior_result_books_no_exam():
    prior = (ExamNeed("ct", "CT", recognised_prior_result=True),)
    p = Problem(7, (referral("r", consultation=CARD, exams=prior),), (slot("c0", 0),))
    assert set(solve(p).items_of("r")) == {"consultation"}


def test_green_channel_uses_overflow_and_routine_may_not():
    full = (slot("s0", 0, reserved=0, overflow=1),)
    p = Problem(7, (referral("routine", consultation=CARD), referral("green", Urgency.URGENT, green_channel=True, consultation=CARD)), full)
    s = solve(p)
    check_valid(p, s)
    assert s.placed_referral_ids() == {"green"}
    assert s.items_of("green")["consultation"].pool == Pool.OVERFLOW
    assert s.unplaced_by_id()["routine"].reason == ReasonCode.NO_CONSULTATION_SLOT_BEFORE_DEADLINE
    exams_only = Problem(7, (referral("routine", exams=CT), referral("green", green_channel=True, exams=CT)), (), (exam("o0", 0, pool=Pool.OVERFLOW),))
    assert solve(exams_only).placed_referral_ids() == {"green"}


def test_green_channel_prefers_the_reservation_while_it_lasts():
    p = Problem(7, (referral("green", green_channel=True, consultation=CARD),), (slot("s0", 0, reserved=1, overflow=1),))
    s = solve(p)
    assert s.items_of("green")["consultation"].pool == Pool.RESERVED
    assert s.terms["overflow"] == 0


def test_preferred_doctor_and_expert_level():
    need = ConsultationNeed("CARD", preferred_doctor_id="dr-b")
    slots = (slot("a", 0, doctor="dr-a"), slot("b", 0, 540, doctor="dr-b"))
    assert solve(Problem(7, (referral("r", consultation=need),), slots)).items_of("r")["consultation"].resource_id == "b"
    expert = ConsultationNeed("CARD", preferred_title=Title.EXPERT)
    slots = (slot("g", 0), slot("x", 1, title=Title.EXPERT))
    # An expert a day later (wait 4) is cheaper than a general doctor today (6).
    assert solve(Problem(7, (referral("r", consultation=expert),), slots)).items_of("r")["consultation"].resource_id == "x"


def test_fairness_between_clinics_against_quota():
    refs = (referral("a1", clinic_id="A", consultation=CARD), referral("a2", clinic_id="A", consultation=CARD), referral("b1", clinic_id="B", consultation=CARD))
    p = Problem(7, refs, (slot("s0", 0, reserved=2),), quotas=(ClinicQuota("A", 1), ClinicQuota("B", 1)))
    s = solve(p)
    assert "b1" in s.placed_referral_ids()
    assert s.terms["fairness"] == 0
    lopsided = solve(replace(p, quotas=(ClinicQuota("A", 2), ClinicQuota("B", 1))))
    assert lopsided.terms["fairness"] == 50 * p.config.weights.fairness_per_point


def test_greedy_is_first_come_first_served():
    refs = (referral("early-routine", consultation=CARD), referral("late-urgent", Urgency.URGENT, accepted=1, consultation=CARD))
    p = Problem(7, refs, (slot("s1", 1),))
    g = solve_greedy(p)
    assert g.placed_referral_ids() == {"early-routine"}
    assert g.unplaced_by_id()["late-urgent"].reason == ReasonCode.CAPACITY_TAKEN
    assert solve(p).placed_referral_ids() == {"late-urgent"}


def test_objective_is_the_sum_of_terms_and_matches_the_bound_when_optimal():
    refs = tuple(referral(f"r{i}", [Urgency.ROUTINE, Urgency.URGENT][i % 2], consultation=CARD, exams=CT) for i in range(6))
    p = Problem(7, refs, tuple(slot(f"c{d}", d, 600, reserved=2) for d in range(4)), tuple(exam(f"e{d}{k}", d, 420 + 30 * k) for d in range(4) for k in range(2)))
    s = solve(p)
    check_valid(p, s)
    assert s.status == Status.OPTIMAL
    assert s.objective == sum(s.terms.values()) == round(s.bound)
    assert all(a.kind in (ItemKind.CONSULTATION, ItemKind.EXAM) for a in s.assignments)
