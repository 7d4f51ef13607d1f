"""The greedy's free-capacity index books exactly what the option-by-option search books."""

from __future__ import annotations

from dataclasses import replace

from benchmarks.scheduler.generator import COUNTY, generate_consortium
from scheduling_engine_support import check_valid

from services.scheduling.engine import ConsultationNeed, ExamNeed, solve_greedy
from services.scheduling.engine.greedy import fcfs_order, greedy_picks
from services.scheduling.engine.options import Catalog, base_usage, referral_options
from services.scheduling.engine.placement import Usage, place_referral


def _reference(problem):
    """The greedy as it was: every referral's options enumerated, then searched."""
    cat = Catalog.of(problem)
    base = base_usage(problem, cat)
    usage = Usage(cat, base)
    refs = {r.referral_id: r for r in problem.referrals}
    picks = {}
    for rid in fcfs_order(problem):
        ro = referral_options(problem, cat, base, refs[rid])
        if not ro.items:
            continue
        chosen = place_referral(ro, usage, problem.config.min_gap_minutes)
        if chosen is not None:
            usage.take_all(ro, chosen)
            picks[rid] = chosen
    return picks


def _with_second_consultations(problem):
    # Every fifth referral with a consultation also sees neurology, after its exams.
    out = []
    for i, r in enumerate(problem.referrals):
        if r.consultation is not None and i % 5 == 0:
            r = replace(r, extra_consultations=(ConsultationNeed("NEURO", item_id="consultation-2"),),
                        exams=r.exams + (ExamNeed("exam-read-by-2", "US", read_by=("consultation-2",)),))
        out.append(r)
    return replace(problem, referrals=tuple(out))


def test_indexed_greedy_equals_the_option_search_under_tight_capacity():
    for seed, n in ((11, 200), (12, 350)):
        [p] = generate_consortium(COUNTY, n, seed)
        for problem in (p, _with_second_consultations(p)):
            cat = Catalog.of(problem)
            fast = greedy_picks(problem, cat, base_usage(problem, cat))
            assert fast == _reference(problem)
            assert len(fast) < len(problem.referrals)  # tight: some wait
            check_valid(problem, solve_greedy(problem))
