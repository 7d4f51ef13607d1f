"""The CP-SAT allocation model.

One Boolean per (item, candidate option) and one per referral ("placed"); an item takes
exactly one option iff its referral is placed (all or nothing: a half-booked referral
helps nobody). Hard rules that concern one item alone are already in the options; the
model adds what couples items and referrals:

* capacity: per outpatient slot (non-green places <= reserved, all <= reserved +
  overflow), per exam slot (one place), per bed-night (one place);
* same gender per night in SAME_PER_NIGHT rooms;
* order inside a referral: exams end ``min_gap`` before the consultation that reads them
  starts (or start after it ends), no two timed items of one referral closer than the
  gap on a day, admission not before the consultation's day.

The objective is the sum of the soft terms priced exactly as the scorer prices them
(``assemble.evaluate``), so the reported terms add up to CP-SAT's objective and the
proven bound is a bound on that same number.

Scale: options per item are capped (cheapest, then earliest, kept; the greedy choice is
always kept) and the greedy allocation is given as a solution hint. Above
``batch_size`` referrals the run is decomposed in time: referrals are taken in batches
by accepted day (then urgency), each batch optimised with the earlier batches' bookings
fixed, as the incremental service would do; no global bound is then reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from ortools.sat.python import cp_model

from . import lns
from .assemble import Picks, build_solution, clinic_targets, evaluate
from .greedy import greedy_picks
from .model import (
    BookingState,
    ClinicQuota,
    ExistingBooking,
    Gender,
    GenderPolicy,
    ItemKind,
    Problem,
    Urgency,
)
from .options import BaseUsage, Catalog, Option, ReferralOptions, base_usage, referral_options
from .options import skeleton as skeleton_of
from .placement import related_consultations
from .solution import Solution, Status


@dataclass(frozen=True)
class SolverParams:
    time_limit_seconds: float = 10.0
    num_workers: int = 2
    random_seed: int = 0
    max_options_per_item: int | None = 150
    batch_size: int = 1500
    greedy_hint: bool = True
    # Deterministic (the default): every limit is CP-SAT work ("deterministic time"),
    # not seconds, and every search is single-threaded or seeded, so one seed gives one
    # Solution on any machine. The work budget is ``deterministic_time_limit``, else
    # ``time_limit_seconds * DET_UNITS_PER_SECOND``; a quarter goes to the whole model
    # (a bound, and the optimum of small runs), the rest to the seeded LNS (``lns.py``).
    # ``time_limit_seconds`` stays a wall-clock safety cap (``WALL_CAP_FACTOR`` times it);
    # a run it cuts says so in ``Solution.notes`` and is not reproducible.
    # Not deterministic: CP-SAT's parallel portfolio on ``num_workers`` threads for
    # ``time_limit_seconds`` of wall clock.
    deterministic: bool = True
    deterministic_time_limit: float | None = None
    lns_neighbourhood: int = 60  # referrals freed per LNS step
    lns_step_budget: float = 0.25  # deterministic units per LNS step
    log_search: bool = False

    def work_budget(self, time_limit: float) -> float:
        if self.deterministic_time_limit is not None:
            return self.deterministic_time_limit
        return time_limit * DET_UNITS_PER_SECOND


# CP-SAT deterministic units per wall second of one worker, measured on the 2-core
# benchmark machine (about 0.5): the default budget then ends near the time limit.
DET_UNITS_PER_SECOND = 0.5
WALL_CAP_FACTOR = 2.0


_URGENCY_RANK = {Urgency.EMERGENCY: 0, Urgency.URGENT: 1, Urgency.ROUTINE: 2}


def solve(problem: Problem, params: SolverParams = SolverParams()) -> Solution:
    started = time.perf_counter()
    cat = Catalog.of(problem)
    base = base_usage(problem, cat)
    if len(problem.referrals) <= params.batch_size:
        ropts, picks, status, bound, notes = _solve_run(problem, cat, base, params, params.time_limit_seconds)
    else:
        ropts, picks, status, bound, notes = _solve_batched(problem, cat, base, params, started)
    return build_solution(
        problem, cat, base, ropts, picks,
        solver="cpsat", status=status, bound=bound, seconds=time.perf_counter() - started, notes=notes,
    )


def _solve_run(problem: Problem, cat: Catalog, base: BaseUsage, params: SolverParams, time_limit: float) -> tuple[dict[str, ReferralOptions], Picks, Status, float | None, tuple[str, ...]]:
    full = {r.referral_id: referral_options(problem, cat, base, r) for r in problem.referrals}
    hint = greedy_picks(problem, cat, base, full) if params.greedy_hint else {}
    if params.max_options_per_item is None:
        ropts = full
    else:
        ropts = {
            rid: referral_options(problem, cat, base, ro.referral, params.max_options_per_item, hint.get(rid))
            for rid, ro in full.items()
        }
    if not params.deterministic:
        picks, status, bound, _ = _solve_block(problem, cat, base, ropts, params, time_limit, hint, clinic_targets(problem))
        if status is None:
            return ropts, hint, Status.FEASIBLE, None, ("CP-SAT found no solution in time; greedy allocation returned",)
        return ropts, picks, status, bound, ()
    started = time.perf_counter()
    wall_deadline = started + WALL_CAP_FACTOR * time_limit
    budget = params.work_budget(time_limit)
    whole = _solve_block(problem, cat, base, ropts, params, WALL_CAP_FACTOR * time_limit, hint, clinic_targets(problem),
                         det_limit=budget / 4)
    picks, status, bound, spent = whole
    notes: tuple[str, ...] = ()
    if status is None:
        picks, status = hint, Status.FEASIBLE
        notes = ("CP-SAT found no solution on the whole model; greedy allocation improved by LNS",)
    if status == Status.OPTIMAL or budget - spent <= params.lns_step_budget:
        return ropts, picks, status, bound, notes
    skeletons = {rid: skeleton_of(problem, ro.referral) for rid, ro in ropts.items()}
    if hint and sum(evaluate(problem, cat, base, skeletons, hint).values()) < sum(evaluate(problem, cat, base, skeletons, picks).values()):
        picks = hint

    def sub_solve(sub, sub_cat, sub_base, sub_ropts, det, sub_hint):
        return _solve_block(sub, sub_cat, sub_base, sub_ropts, params, WALL_CAP_FACTOR * time_limit, sub_hint, {}, det_limit=det)

    picks, steps, cut = lns.improve(
        problem, cat, base, picks, seed=params.random_seed, budget=budget - spent, wall_deadline=wall_deadline,
        step_budget=params.lns_step_budget, neighbourhood=params.lns_neighbourhood,
        max_options=params.max_options_per_item, solve_block=sub_solve,
    )
    notes += (f"deterministic: {budget:.1f} work units, whole model then {steps} LNS steps (seed {params.random_seed})",)
    if cut:
        notes += ("cut by the wall-clock safety cap before the work budget: not reproducible",)
    return ropts, picks, Status.FEASIBLE, bound, notes


def _solve_batched(problem: Problem, cat: Catalog, base: BaseUsage, params: SolverParams, started: float) -> tuple[dict[str, ReferralOptions], Picks, Status, float | None, tuple[str, ...]]:
    order = sorted(
        range(len(problem.referrals)),
        key=lambda i: (problem.referrals[i].accepted_day, _URGENCY_RANK[problem.referrals[i].urgency], i),
    )
    n_batches = -(-len(order) // params.batch_size)
    demand: dict[str, int] = {}
    for r in problem.referrals:
        demand[r.clinic_id] = demand.get(r.clinic_id, 0) + 1
    existing = list(problem.existing)
    ropts_all: dict[str, ReferralOptions] = {}
    picks_all: Picks = {}
    fallbacks = 0
    for b in range(n_batches):
        chunk = tuple(problem.referrals[i] for i in order[b * params.batch_size:(b + 1) * params.batch_size])
        chunk_demand: dict[str, int] = {}
        for r in chunk:
            chunk_demand[r.clinic_id] = chunk_demand.get(r.clinic_id, 0) + 1
        quotas = tuple(
            ClinicQuota(q.clinic_id, round(q.places * chunk_demand.get(q.clinic_id, 0) / demand[q.clinic_id]))
            for q in problem.quotas
            if demand.get(q.clinic_id)
        )
        sub = replace(problem, referrals=chunk, existing=tuple(existing), quotas=quotas)
        sub_base = base_usage(sub, cat)
        remaining = params.time_limit_seconds - (time.perf_counter() - started)
        budget = max(1.0, remaining / (n_batches - b))
        ropts, picks, status, _, notes = _solve_run(sub, cat, sub_base, params, budget)
        fallbacks += bool(notes)
        ropts_all.update(ropts)
        picks_all.update(picks)
        existing.extend(_as_bookings(ropts, picks))
    # Explain the waitlist against the capacity outside the run, not the earlier batches'.
    for r in problem.referrals:
        if r.referral_id not in picks_all:
            ropts_all[r.referral_id] = referral_options(problem, cat, base, r)
    notes = (f"decomposed into {n_batches} batches of <= {params.batch_size} referrals; no global bound",)
    if fallbacks:
        notes += (f"{fallbacks} batches fell back to the greedy allocation",)
    return ropts_all, picks_all, Status.FEASIBLE, None, notes


def _as_bookings(ropts: dict[str, ReferralOptions], picks: Picks) -> list[ExistingBooking]:
    out = []
    for rid, chosen in picks.items():
        r = ropts[rid].referral
        for item_id, o in chosen.items():
            out.append(
                ExistingBooking(
                    referral_id=rid,
                    item_id=item_id,
                    resource_id=o.resource_id,
                    state=BookingState.FIXED,
                    start_night=o.nights[0] if o.nights else None,
                    nights=len(o.nights) if o.nights else None,
                    uses_overflow=r.green_channel,
                    patient_gender=r.patient_gender,
                )
            )
    return out


class _Model:
    """Builds the CP-SAT model; kept as a small object to share the index maps."""

    def __init__(self, problem: Problem, cat: Catalog, base: BaseUsage) -> None:
        self.problem = problem
        self.cat = cat
        self.base = base
        self.m = cp_model.CpModel()
        self.obj: list[tuple[int, cp_model.IntVar]] = []
        self.const = 0
        self.x: dict[str, dict[str, list[tuple[cp_model.IntVar, Option]]]] = {}
        self.placed: dict[str, cp_model.IntVar] = {}
        self.visits: dict[str, dict[int, cp_model.IntVar]] = {}
        self.slot_use: dict[str, list[tuple[cp_model.IntVar, bool]]] = {}
        self.exam_use: dict[str, list[cp_model.IntVar]] = {}
        self.bed_night_use: dict[tuple[str, int], list[cp_model.IntVar]] = {}
        self.room_night_use: dict[tuple[str, int], list[tuple[cp_model.IntVar, Gender]]] = {}
        self.clinic_placed: dict[str, list[cp_model.IntVar]] = {}
        self.clinic_const: dict[str, int] = {}
        # Auxiliary variables kept for a complete hint (an incomplete one is often lost).
        self.overflow_vars: list[tuple[cp_model.IntVar, str]] = []
        self.interval_vars: list[tuple[str, str, cp_model.IntVar, cp_model.IntVar, cp_model.IntVar, int, int]] = []
        self.shortfall_vars: list[tuple[cp_model.IntVar, str, int]] = []
        self.worst: cp_model.IntVar | None = None
        self.male_vars: list[tuple[cp_model.IntVar, list[tuple[cp_model.IntVar, Gender]]]] = []
        self._items: dict[str, tuple] = {}
        self._clinic: dict[str, str] = {}

    def add_referral(self, ro: ReferralOptions) -> None:
        r = ro.referral
        w = self.problem.config.weights
        if not ro.items:
            self.clinic_const[r.clinic_id] = self.clinic_const.get(r.clinic_id, 0) + 1
            return
        if any(not it.options for it in ro.items):
            self.const += w.unplaced(r.urgency)
            return
        m = self.m
        p = m.NewBoolVar(f"placed[{r.referral_id}]")
        self.placed[r.referral_id] = p
        self.clinic_placed.setdefault(r.clinic_id, []).append(p)
        if ro.forced:
            m.Add(p == 1)
        self.const += w.unplaced(r.urgency)
        self.obj.append((-w.unplaced(r.urgency), p))
        items: dict[str, list[tuple[cp_model.IntVar, Option]]] = {}
        for it in ro.items:
            pairs = []
            for o in it.options:
                v = m.NewBoolVar("")
                pairs.append((v, o))
                if o.cost:
                    self.obj.append((o.cost, v))
                self._register(r.green_channel, r.patient_gender, it.kind, v, o)
            m.Add(sum(v for v, _ in pairs) == p)
            items[it.item_id] = pairs
        self.x[r.referral_id] = items
        self._items[r.referral_id] = ro.items
        self._clinic[r.referral_id] = r.clinic_id
        self._trips(ro, p, items)
        self._order(ro, p, items)

    def _register(self, green: bool, gender: Gender | None, kind: ItemKind, v: cp_model.IntVar, o: Option) -> None:
        if kind == ItemKind.CONSULTATION:
            self.slot_use.setdefault(o.resource_id, []).append((v, green))
        elif kind == ItemKind.EXAM:
            self.exam_use.setdefault(o.resource_id, []).append(v)
        else:
            room = self.cat.rooms[o.room_id] if o.room_id else None
            for n in o.nights:
                self.bed_night_use.setdefault((o.resource_id, n), []).append(v)
                if room is not None and room.gender_policy == GenderPolicy.SAME_PER_NIGHT and gender is not None:
                    self.room_night_use.setdefault((room.room_id, n), []).append((v, gender))

    def _trips(self, ro: ReferralOptions, p: cp_model.IntVar, items: dict[str, list[tuple[cp_model.IntVar, Option]]]) -> None:
        if len(items) == 1:
            self.obj.append((ro.trip_cost, p))
            return
        visits: dict[int, cp_model.IntVar] = {}
        for pairs in items.values():
            by_day: dict[int, list[cp_model.IntVar]] = {}
            for v, o in pairs:
                by_day.setdefault(o.day, []).append(v)
            for day, vs in by_day.items():
                if day not in visits:
                    visits[day] = self.m.NewBoolVar("")
                    self.obj.append((ro.trip_cost, visits[day]))
                self.m.Add(sum(vs) <= visits[day])
        self.visits[ro.referral.referral_id] = visits

    def _order(self, ro: ReferralOptions, p: cp_model.IntVar, items: dict[str, list[tuple[cp_model.IntVar, Option]]]) -> None:
        gap = self.problem.config.min_gap_minutes
        m = self.m

        def start(pairs: list[tuple[cp_model.IntVar, Option]]) -> cp_model.LinearExpr:
            return sum(o.abs_start * v for v, o in pairs)

        def end(pairs: list[tuple[cp_model.IntVar, Option]]) -> cp_model.LinearExpr:
            return sum(o.abs_end * v for v, o in pairs)

        consults = [it for it in ro.items if it.kind == ItemKind.CONSULTATION]
        exams = [it for it in ro.items if it.kind == ItemKind.EXAM]
        admission = next((it for it in ro.items if it.kind == ItemKind.ADMISSION), None)
        ordered: set[frozenset[str]] = set()
        for e in exams:
            pairs = items[e.item_id]
            for ci in related_consultations(e, consults):
                c = items[ci.item_id]
                if e.before_consultation:
                    m.Add(end(pairs) + gap <= start(c)).OnlyEnforceIf(p)
                else:
                    m.Add(end(c) + gap <= start(pairs)).OnlyEnforceIf(p)
                ordered.add(frozenset((e.item_id, ci.item_id)))
        if admission is not None:
            a = items[admission.item_id]
            for ci in consults:
                c = items[ci.item_id]
                m.Add(sum(o.day * v for v, o in a) >= sum(o.day * v for v, o in c)).OnlyEnforceIf(p)
        # Timed items not ordered above (exams on one side of the consultation, two
        # consultations) may still collide: they keep the gap apart.
        timed = consults + exams
        loose = [
            it for it in timed
            if any(other is not it and frozenset((it.item_id, other.item_id)) not in ordered for other in timed)
        ]
        if len(loose) >= 2:
            intervals = []
            for e in loose:
                pairs = items[e.item_id]
                lo = min(o.abs_start for _, o in pairs)
                hi = max(o.abs_end + gap for _, o in pairs)
                lengths = [o.length_minutes + gap for _, o in pairs]
                s = m.NewIntVar(lo, hi, "")
                size = m.NewIntVar(min(lengths), max(lengths), "")
                en = m.NewIntVar(lo, hi, "")
                m.Add(s == start(pairs)).OnlyEnforceIf(p)
                m.Add(en == end(pairs) + gap).OnlyEnforceIf(p)
                intervals.append(m.NewOptionalIntervalVar(s, size, en, p, ""))
                self.interval_vars.append((ro.referral.referral_id, e.item_id, s, size, en, lo, min(lengths)))
            m.AddNoOverlap(intervals)

    def add_capacity(self) -> None:
        m = self.m
        w = self.problem.config.weights
        base = self.base
        for sid, uses in self.slot_use.items():
            s = self.cat.outpatient[sid]
            base_ng = base.outpatient_nongreen.get(sid, 0)
            base_total = base_ng + base.outpatient_green.get(sid, 0)
            nongreen = [v for v, g in uses if not g]
            if nongreen:
                m.Add(sum(nongreen) <= s.reserved_places - base_ng)
            total = sum(v for v, _ in uses)
            m.Add(total <= s.reserved_places + s.overflow_places - base_total)
            over = m.NewIntVar(0, max(0, s.overflow_places + base_total), "")
            m.Add(over >= total + base_total - s.reserved_places)
            self.obj.append((w.overflow_use, over))
            self.overflow_vars.append((over, sid))
        for sid in (set(base.outpatient_nongreen) | set(base.outpatient_green)) - set(self.slot_use):
            total = base.outpatient_nongreen.get(sid, 0) + base.outpatient_green.get(sid, 0)
            self.const += w.overflow_use * max(0, total - self.cat.outpatient[sid].reserved_places)
        for vs in self.exam_use.values():
            if len(vs) > 1:
                m.AddAtMostOne(vs)
        for vs in self.bed_night_use.values():
            if len(vs) > 1:
                m.AddAtMostOne(vs)
        for uses in self.room_night_use.values():
            genders = {g for _, g in uses}
            if len(genders) < 2:
                continue
            male = m.NewBoolVar("")
            self.male_vars.append((male, uses))
            for v, g in uses:
                m.AddImplication(v, male if g == Gender.MALE else male.Not())

    def add_fairness(self, targets: dict[str, int]) -> None:
        if not targets:
            return
        m = self.m
        worst = m.NewIntVar(0, 100, "worst_shortfall_points")
        for clinic, target in targets.items():
            placed = sum(self.clinic_placed.get(clinic, [])) + self.clinic_const.get(clinic, 0)
            short = m.NewIntVar(0, target, "")
            m.Add(short >= target - placed)
            m.Add(worst * target >= 100 * short)
            self.shortfall_vars.append((short, clinic, target))
        self.worst = worst
        self.obj.append((self.problem.config.weights.fairness_per_point, worst))

    def add_hint(self, hint: Picks) -> None:
        for rid, p in self.placed.items():
            chosen = hint.get(rid)
            self.m.AddHint(p, chosen is not None)
            days = {o.day for o in chosen.values()} if chosen else set()
            for item_id, pairs in self.x[rid].items():
                for v, o in pairs:
                    self.m.AddHint(v, chosen is not None and chosen.get(item_id) == o)
            for day, v in self.visits.get(rid, {}).items():
                self.m.AddHint(v, day in days)
        gap = self.problem.config.min_gap_minutes
        for rid, item_id, s, size, en, lo, length in self.interval_vars:
            o = hint.get(rid, {}).get(item_id)
            if o is None:
                self.m.AddHint(s, lo)
                self.m.AddHint(size, length)
                self.m.AddHint(en, lo + length)
            else:
                self.m.AddHint(s, o.abs_start)
                self.m.AddHint(size, o.length_minutes + gap)
                self.m.AddHint(en, o.abs_end + gap)
        hinted = {id(v) for rid, chosen in hint.items() if rid in self.x for item_id, pairs in self.x[rid].items() for v, o in pairs if chosen.get(item_id) == o}
        for male, uses in self.male_vars:
            self.m.AddHint(male, any(id(v) in hinted and g == Gender.MALE for v, g in uses))
        used: dict[str, int] = {}
        for rid, chosen in hint.items():
            for item_id, o in chosen.items():
                if rid in self.x and any(it.kind == ItemKind.CONSULTATION and it.item_id == item_id for it in self._items[rid]):
                    used[o.resource_id] = used.get(o.resource_id, 0) + 1
        for over, sid in self.overflow_vars:
            total = used.get(sid, 0) + self.base.outpatient_nongreen.get(sid, 0) + self.base.outpatient_green.get(sid, 0)
            self.m.AddHint(over, max(0, total - self.cat.outpatient[sid].reserved_places))
        placed_by_clinic: dict[str, int] = {}
        for rid in hint:
            if rid in self.placed:
                clinic = self._clinic[rid]
                placed_by_clinic[clinic] = placed_by_clinic.get(clinic, 0) + 1
        worst = 0
        for short, clinic, target in self.shortfall_vars:
            value = max(0, target - placed_by_clinic.get(clinic, 0) - self.clinic_const.get(clinic, 0))
            self.m.AddHint(short, value)
            worst = max(worst, -(-100 * value // target))
        if self.worst is not None:
            self.m.AddHint(self.worst, worst)


def _solve_block(problem: Problem, cat: Catalog, base: BaseUsage, ropts: dict[str, ReferralOptions], params: SolverParams, time_limit: float, hint: Picks, targets: dict[str, int], det_limit: float | None = None) -> tuple[Picks, Status | None, float | None, float]:
    """One CP-SAT solve. With ``det_limit`` (deterministic mode): a single worker capped
    in deterministic units; else the parallel portfolio for ``time_limit`` seconds."""
    model = _Model(problem, cat, base)
    for ro in ropts.values():
        model.add_referral(ro)
    model.add_capacity()
    model.add_fairness(targets)
    if hint:
        model.add_hint(hint)
    model.m.Minimize(sum(c * v for c, v in model.obj) + model.const)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.1, time_limit)
    solver.parameters.random_seed = params.random_seed
    solver.parameters.log_search_progress = params.log_search
    if det_limit is not None:
        solver.parameters.num_workers = 1
        solver.parameters.max_deterministic_time = max(0.01, det_limit)
    else:
        solver.parameters.num_workers = params.num_workers
    code = solver.Solve(model.m)
    det = solver.response_proto.deterministic_time
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return {}, None, None, det
    picks: Picks = {}
    for rid, p in model.placed.items():
        if solver.BooleanValue(p):
            picks[rid] = {
                item_id: next(o for v, o in pairs if solver.BooleanValue(v))
                for item_id, pairs in model.x[rid].items()
            }
    status = Status.OPTIMAL if code == cp_model.OPTIMAL else Status.FEASIBLE
    return picks, status, solver.BestObjectiveBound(), det
