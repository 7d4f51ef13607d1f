"""Why a referral could not be placed: the first cause found, from the patient's days to the
competition for capacity (the sentences are in solution.py)."""

from __future__ import annotations

from .model import ItemKind, Problem, deadline_day
from .options import Catalog, ReferralOptions, bed_admits
from .placement import Usage, place_referral
from .solution import ReasonCode, UnplacedReferral


def unplaced(problem: Problem, ro: ReferralOptions, reason: ReasonCode, item_id: str | None, what: str = "") -> UnplacedReferral:
    return UnplacedReferral(ro.referral.referral_id, reason, deadline_day(problem, ro.referral), item_id, what)


def diagnose(problem: Problem, cat: Catalog, ro: ReferralOptions, fresh: Usage) -> UnplacedReferral:
    """Reason for a referral left unplaced; ``fresh`` holds only bookings outside the run."""
    r = ro.referral
    last = deadline_day(problem, r)
    if not any(d in r.available_days for d in range(r.accepted_day, last + 1)):
        return unplaced(problem, ro, ReasonCode.NO_PATIENT_DAY_BEFORE_DEADLINE, None)
    for item in ro.items:
        if item.options:
            continue
        if item.kind == ItemKind.CONSULTATION:
            department = next(c.department for c in r.all_consultations() if c.item_id == item.item_id)
            return unplaced(problem, ro, ReasonCode.NO_CONSULTATION_SLOT_BEFORE_DEADLINE, item.item_id, department)
        if item.kind == ItemKind.EXAM:
            modality = next(e.modality for e in r.exams if e.item_id == item.item_id)
            return unplaced(problem, ro, ReasonCode.NO_EXAM_SLOT_BEFORE_DEADLINE, item.item_id, modality)
        need = r.admission
        assert need is not None
        matching = any(
            bed_admits(r, need, cat.rooms[b.room_id], cat.unit_of(cat.rooms[b.room_id]))
            for b in problem.beds
        )
        code = ReasonCode.NO_BED_NIGHTS_BEFORE_DEADLINE if matching else ReasonCode.NO_MATCHING_BED
        return unplaced(problem, ro, code, item.item_id, str(need.nights))
    if place_referral(ro, fresh, problem.config.min_gap_minutes) is None:
        return unplaced(problem, ro, ReasonCode.ORDER_INFEASIBLE, None)
    return unplaced(problem, ro, ReasonCode.CAPACITY_TAKEN, None)
