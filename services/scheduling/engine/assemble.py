"""Turning chosen options into a Solution: the scorer and the pool attribution."""

from __future__ import annotations

import math

from .model import ItemKind, Pool, Problem
from .options import BaseUsage, Catalog, Option, ReferralOptions
from .explain import diagnose
from .placement import Usage
from .solution import TERMS, ItemAssignment, Solution, Status

Picks = dict[str, dict[str, Option]]  # referral id -> item id -> chosen option


def outpatient_counts(ropts: dict[str, ReferralOptions], picks: Picks) -> dict[str, tuple[int, int]]:
    """(non-green, green) new places per outpatient slot."""
    counts: dict[str, list[int]] = {}
    for rid, items in picks.items():
        ro = ropts[rid]
        for item in ro.items:
            if item.kind == ItemKind.CONSULTATION:
                c = counts.setdefault(items[item.item_id].resource_id, [0, 0])
                c[1 if ro.referral.green_channel else 0] += 1
    return {k: (v[0], v[1]) for k, v in counts.items()}


def clinic_targets(problem: Problem) -> dict[str, int]:
    """Places each clinic with a quota should get: its quota, capped by its demand."""
    demand: dict[str, int] = {}
    for r in problem.referrals:
        demand[r.clinic_id] = demand.get(r.clinic_id, 0) + 1
    return {q.clinic_id: min(q.places, demand.get(q.clinic_id, 0)) for q in problem.quotas if min(q.places, demand.get(q.clinic_id, 0)) > 0}


def shortfall_points(target: int, placed: int) -> int:
    """Percentage points (rounded up) the clinic is short of its target."""
    return math.ceil(100 * max(0, target - placed) / target)


def evaluate(problem: Problem, cat: Catalog, base: BaseUsage, ropts: dict[str, ReferralOptions], picks: Picks) -> dict[str, int]:
    w = problem.config.weights
    terms = {t: 0 for t in TERMS}
    placed_by_clinic: dict[str, int] = {}
    for rid, ro in ropts.items():
        r = ro.referral
        chosen = picks.get(rid)
        if chosen is None and ro.items:
            terms["unplaced"] += w.unplaced(r.urgency)
            continue
        placed_by_clinic[r.clinic_id] = placed_by_clinic.get(r.clinic_id, 0) + 1
        chosen = chosen or {}
        for o in chosen.values():
            for name, cost in o.costs:
                terms[name] += cost
        terms["trips"] += len({o.day for o in chosen.values()}) * ro.trip_cost
    counts = outpatient_counts(ropts, picks)
    for slot_id in set(counts) | set(base.outpatient_nongreen) | set(base.outpatient_green):
        ng, g = counts.get(slot_id, (0, 0))
        total = ng + g + base.outpatient_nongreen.get(slot_id, 0) + base.outpatient_green.get(slot_id, 0)
        terms["overflow"] += w.overflow_use * max(0, total - cat.outpatient[slot_id].reserved_places)
    targets = clinic_targets(problem)
    if targets:
        worst = max(shortfall_points(t, placed_by_clinic.get(c, 0)) for c, t in targets.items())
        terms["fairness"] = w.fairness_per_point * worst
    return terms


def build_solution(problem: Problem, cat: Catalog, base: BaseUsage, ropts: dict[str, ReferralOptions], picks: Picks, *, solver: str, status: Status, bound: float | None, seconds: float, notes: tuple[str, ...] = ()) -> Solution:
    reserved_left = {
        sid: cat.outpatient[sid].reserved_places - base.outpatient_nongreen.get(sid, 0) - ng
        for sid, (ng, _) in outpatient_counts(ropts, picks).items()
    }
    assignments: list[ItemAssignment] = []
    for ro in ropts.values():
        chosen = picks.get(ro.referral.referral_id)
        if chosen is None:
            continue
        tentative = {
            b.item_id: b
            for b in problem.existing
            if b.referral_id == ro.referral.referral_id and b.state.value == "TENTATIVE"
        }
        for item in ro.items:
            o = chosen[item.item_id]
            pool = o.pool
            if item.kind == ItemKind.CONSULTATION and ro.referral.green_channel:
                pool = Pool.RESERVED if reserved_left[o.resource_id] > 0 else Pool.OVERFLOW
                reserved_left[o.resource_id] -= 1
            t = tentative.get(item.item_id)
            assignments.append(
                ItemAssignment(
                    referral_id=ro.referral.referral_id,
                    item_id=item.item_id,
                    kind=item.kind,
                    resource_id=o.resource_id,
                    day=o.day,
                    start_minute=o.start_minute,
                    length_minutes=o.length_minutes,
                    pool=pool,
                    nights=o.nights,
                    moved=t is not None and not o.same_place(t),
                )
            )
    fresh = Usage(cat, base)
    waitlist = tuple(
        diagnose(problem, cat, ro, fresh)
        for rid, ro in ropts.items()
        if rid not in picks and ro.items
    )
    terms = evaluate(problem, cat, base, ropts, picks)
    return Solution(
        solver=solver,
        status=status,
        assignments=tuple(assignments),
        unplaced=waitlist,
        objective=sum(terms.values()),
        terms=terms,
        bound=bound,
        solve_seconds=seconds,
        notes=notes,
        placed_without_items=tuple(rid for rid, ro in ropts.items() if not ro.items),
    )
