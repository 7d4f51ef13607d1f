"""The baseline: what a booking desk does today.

Referrals are taken first come, first served (accepted day, then input order), each
booked at the earliest free place of every item, without looking at other referrals,
trips or preferences. Bookings already made keep their place.
"""

from __future__ import annotations

import time

from .assemble import Picks, build_solution
from .model import BookingState, Problem
from .options import BaseUsage, Catalog, ItemOptions, ReferralOptions, base_usage, referral_options
from .placement import Usage, place_referral
from .solution import Solution, Status


def fcfs_order(problem: Problem) -> list[str]:
    index = {r.referral_id: i for i, r in enumerate(problem.referrals)}
    booked = {b.referral_id for b in problem.existing}
    return sorted(
        index,
        key=lambda rid: (rid not in booked, problem.referrals[index[rid]].accepted_day, index[rid]),
    )


def _kept_in_place(problem: Problem, ro: ReferralOptions) -> ReferralOptions:
    """The referral with each tentatively booked item narrowed to its booked place."""
    tentative = {
        b.item_id: b
        for b in problem.existing
        if b.referral_id == ro.referral.referral_id and b.state == BookingState.TENTATIVE
    }
    if not tentative:
        return ro
    items = tuple(
        ItemOptions(i.item_id, i.kind, tuple(o for o in i.options if o.same_place(tentative[i.item_id])), i.before_consultation, i.pinned)
        if i.item_id in tentative
        else i
        for i in ro.items
    )
    return ReferralOptions(ro.referral, items, ro.anchor_item_id, ro.trip_cost, ro.forced)


def greedy_picks(problem: Problem, ropts: dict[str, ReferralOptions], cat: Catalog, base: BaseUsage) -> Picks:
    usage = Usage(cat, base)
    gap = problem.config.min_gap_minutes
    picks: Picks = {}
    for rid in fcfs_order(problem):
        ro = ropts[rid]
        if not ro.items:
            continue
        chosen = place_referral(_kept_in_place(problem, ro), usage, gap) or place_referral(ro, usage, gap)
        if chosen is not None:
            usage.take_all(ro, chosen)
            picks[rid] = chosen
    return picks


def solve_greedy(problem: Problem) -> Solution:
    started = time.perf_counter()
    cat = Catalog.of(problem)
    base = base_usage(problem, cat)
    ropts = {r.referral_id: referral_options(problem, cat, base, r) for r in problem.referrals}
    picks = greedy_picks(problem, ropts, cat, base)
    return build_solution(
        problem, cat, base, ropts, picks,
        solver="greedy", status=Status.FEASIBLE, bound=None, seconds=time.perf_counter() - started,
    )
