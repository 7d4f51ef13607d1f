"""The baseline: what a booking desk does today.

Referrals are taken first come, first served (accepted day, then input order), each
booked at the earliest free place of every item, without looking at other referrals,
trips or preferences. Bookings already made keep their place.
"""

from __future__ import annotations

import time
from dataclasses import replace

from .assemble import Picks, build_solution
from .model import BookingState, Problem
from .freeindex import FreeIndex
from .options import BaseUsage, Catalog, ReferralOptions, base_usage, item_specs, referral_options, skeleton
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
        replace(i, options=tuple(o for o in i.options if o.same_place(tentative[i.item_id])))
        if i.item_id in tentative
        else i
        for i in ro.items
    )
    return ReferralOptions(ro.referral, items, ro.anchor_item_id, ro.trip_cost, ro.forced)


def greedy_picks(problem: Problem, cat: Catalog, base: BaseUsage, ropts: dict[str, ReferralOptions] | None = None) -> Picks:
    """First come, first served. Referrals without bookings of their own are searched on
    the free-capacity index (near-linear); the few with bookings (kept in place when
    they still fit) on their enumerated options (``ropts``, computed when not given)."""
    usage = Usage(cat, base)
    index = FreeIndex(problem, cat, usage)
    gap = problem.config.min_gap_minutes
    with_bookings = {b.referral_id for b in problem.existing}
    refs = {r.referral_id: r for r in problem.referrals}
    picks: Picks = {}
    for rid in fcfs_order(problem):
        r = refs[rid]
        kinds = {item_id: kind for item_id, kind, _ in item_specs(r)}
        if not kinds:
            continue
        if rid in with_bookings:
            ro = ropts[rid] if ropts is not None else referral_options(problem, cat, base, r)
            chosen = place_referral(_kept_in_place(problem, ro), usage, gap) or place_referral(ro, usage, gap)
        else:
            chosen = index.place(r)
        if chosen is not None:
            index.take_all(r, chosen, kinds)
            picks[rid] = chosen
    return picks


def solve_greedy(problem: Problem) -> Solution:
    started = time.perf_counter()
    cat = Catalog.of(problem)
    base = base_usage(problem, cat)
    picks = greedy_picks(problem, cat, base)
    # Placed referrals are priced from their chosen options; only the waitlist needs
    # its candidate options enumerated (to explain why it waits).
    ropts = {
        r.referral_id: skeleton(problem, r) if r.referral_id in picks else referral_options(problem, cat, base, r)
        for r in problem.referrals
    }
    return build_solution(
        problem, cat, base, ropts, picks,
        solver="greedy", status=Status.FEASIBLE, bound=None, seconds=time.perf_counter() - started,
    )
