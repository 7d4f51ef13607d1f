"""Why a referral could not be placed, as a machine code and a bilingual sentence."""

from __future__ import annotations

from .model import ItemKind, Problem, deadline_day
from .options import Catalog, ReferralOptions, bed_admits
from .placement import Usage, place_referral
from .solution import ReasonCode, UnplacedReferral

_TEXTS: dict[ReasonCode, tuple[str, str]] = {
    ReasonCode.NO_PATIENT_DAY_BEFORE_DEADLINE: (
        "The patient can come on no day before the deadline (day {deadline}).",
        "截止日（第{deadline}天）前患者没有可就诊的日期。",
    ),
    ReasonCode.NO_CONSULTATION_SLOT_BEFORE_DEADLINE: (
        "No outpatient slot of {what} is open to this referral on the patient's days before the deadline (day {deadline}).",
        "截止日（第{deadline}天）前，在患者可就诊的日期内没有{what}可用的门诊号源。",
    ),
    ReasonCode.NO_EXAM_SLOT_BEFORE_DEADLINE: (
        "No {what} exam slot is open to this referral on the patient's days before the deadline (day {deadline}), allowing for preparation.",
        "考虑检查准备时间后，截止日（第{deadline}天）前在患者可就诊的日期内没有可用的{what}检查号源。",
    ),
    ReasonCode.NO_MATCHING_BED: (
        "No bed matches the admission (department or specialism, age limits, gender policy, required equipment).",
        "没有符合住院要求（科室或专科、年龄限制、性别安排、必需设备）的床位。",
    ),
    ReasonCode.NO_BED_NIGHTS_BEFORE_DEADLINE: (
        "No matching bed is free for {what} consecutive nights starting before the deadline (day {deadline}).",
        "截止日（第{deadline}天）前没有连续{what}晚空闲且符合要求的床位。",
    ),
    ReasonCode.ORDER_INFEASIBLE: (
        "Each item has free capacity, but not in the required order (exams before the consultation, admission after it, minimum gap) before the deadline (day {deadline}).",
        "各项目单独均有号源，但在截止日（第{deadline}天）前无法按要求的顺序（先检查后就诊、就诊后入院、最小间隔）安排。",
    ),
    ReasonCode.CAPACITY_TAKEN: (
        "The referral fits on its own, but the capacity before the deadline (day {deadline}) went to other referrals (more urgent, or better use of the reservation).",
        "该转诊单独可以安排，但截止日（第{deadline}天）前的号源已分配给其他转诊（更紧急或更能充分利用预留资源）。",
    ),
}


def unplaced(problem: Problem, ro: ReferralOptions, reason: ReasonCode, item_id: str | None, what: str = "") -> UnplacedReferral:
    en, zh = _TEXTS[reason]
    values = {"deadline": deadline_day(problem, ro.referral), "what": what}
    return UnplacedReferral(ro.referral.referral_id, reason, en.format(**values), zh.format(**values), item_id)


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
