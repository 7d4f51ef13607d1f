"""Deterministic large-neighbourhood search over the allocation, for large runs.

Each step frees a neighbourhood of related referrals (one department, modality or ward
over a few days, plus the waitlisted referrals that need it), keeps every other
placement fixed, and re-solves the freed ones with a single-worker CP-SAT whose work is
capped in CP-SAT's *deterministic* time units; the move is kept when the whole
problem's objective does not get worse. The neighbourhoods come from a
``random.Random(seed)`` and every limit is counted in deterministic units, so two runs
with one seed give the same Solution on any machine (the wall-clock limit is only a
safety cap; a run it cuts says so in its notes).
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from typing import Callable

from .assemble import Picks, evaluate
from .model import BookingState, ExistingBooking, ItemKind, Problem, Referral
from .options import BaseUsage, Catalog, ReferralOptions, base_usage, referral_options, skeleton


def _keys(r: Referral) -> set[str]:
    """The resource families a referral competes for."""
    keys = {f"c:{c.department}" for c in r.all_consultations()}
    keys |= {f"e:{e.modality}" for e in r.exams if not e.recognised_prior_result}
    if r.admission is not None:
        keys.add(f"a:{r.admission.department or r.admission.specialism}")
    return keys


def _item_key(r: Referral, kind: ItemKind, item_id: str) -> str:
    if kind == ItemKind.CONSULTATION:
        return next(f"c:{c.department}" for c in r.all_consultations() if c.item_id == item_id)
    if kind == ItemKind.EXAM:
        return next(f"e:{e.modality}" for e in r.exams if e.item_id == item_id)
    assert r.admission is not None
    return f"a:{r.admission.department or r.admission.specialism}"


def improve(
    problem: Problem,
    cat: Catalog,
    base: BaseUsage,
    picks: Picks,
    *,
    seed: int,
    budget: float,
    wall_deadline: float,
    step_budget: float,
    neighbourhood: int,
    max_options: int | None,
    solve_block: Callable,
) -> tuple[Picks, int, bool]:
    """Returns (picks, steps run, cut by the wall clock)."""
    refs = {r.referral_id: r for r in problem.referrals}
    skeletons = {rid: skeleton(problem, r) for rid, r in refs.items()}
    kinds = {rid: {i.item_id: i.kind for i in ro.items} for rid, ro in skeletons.items()}
    keys = {rid: _keys(r) for rid, r in refs.items()}
    pickable = sorted(rid for rid, ks in keys.items() if ks)
    if not pickable:
        return picks, 0, False
    rng = random.Random(seed)
    best = dict(picks)
    best_obj = sum(evaluate(problem, cat, base, skeletons, best).values())
    spent = 0.0
    steps = 0
    cut = False
    in_run = set(refs)
    while spent < budget:
        if time.perf_counter() > wall_deadline:
            cut = True
            break
        steps += 1
        waiting = [rid for rid in pickable if rid not in best]
        seed_rid = rng.choice(waiting) if waiting and rng.random() < 0.6 else rng.choice(pickable)
        key = rng.choice(sorted(keys[seed_rid]))
        lo = refs[seed_rid].accepted_day + rng.randint(-1, 2)
        hi = lo + rng.randint(2, 5)
        related = []
        for rid in pickable:
            if key not in keys[rid]:
                continue
            chosen = best.get(rid)
            if chosen is None:
                if refs[rid].accepted_day <= hi:
                    related.append(rid)
            elif any(lo <= o.day <= hi and _item_key(refs[rid], kinds[rid][i], i) == key for i, o in chosen.items()):
                related.append(rid)
        if len(related) > neighbourhood:
            related = sorted(rng.sample(related, neighbourhood))
        if not related:
            continue
        freed = set(related)
        fixed = [
            ExistingBooking(rid, item_id, o.resource_id, BookingState.FIXED,
                            start_night=o.nights[0] if o.nights else None,
                            nights=len(o.nights) if o.nights else None,
                            uses_overflow=refs[rid].green_channel, patient_gender=refs[rid].patient_gender)
            for rid, chosen in sorted(best.items()) if rid not in freed
            for item_id, o in chosen.items()
        ]
        existing = tuple(b for b in problem.existing if b.referral_id in freed or b.referral_id not in in_run)
        sub = replace(problem, referrals=tuple(refs[rid] for rid in related), existing=existing + tuple(fixed), quotas=())
        sub_base = base_usage(sub, cat)
        hint = {rid: best[rid] for rid in related if rid in best}
        ropts: dict[str, ReferralOptions] = {
            rid: referral_options(sub, cat, sub_base, refs[rid], max_options, hint.get(rid)) for rid in related
        }
        new, status, _, det = solve_block(sub, cat, sub_base, ropts, step_budget, hint)
        spent += det
        if status is None:
            continue
        candidate = {rid: c for rid, c in best.items() if rid not in freed}
        candidate.update(new)
        obj = sum(evaluate(problem, cat, base, skeletons, candidate).values())
        if obj <= best_obj:
            best, best_obj = candidate, obj
    return best, steps, cut
