"""The engine's output: what goes where, what it costs term by term, and what waits."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Mapping

from .model import ItemKind, Pool


class Status(str, Enum):
    OPTIMAL = "OPTIMAL"  # proven optimal for the model solved
    FEASIBLE = "FEASIBLE"  # a valid allocation, optimality not proven


class ReasonCode(str, Enum):
    """Why a referral went to the waitlist; stable strings for the service layer."""

    NO_PATIENT_DAY_BEFORE_DEADLINE = "NO_PATIENT_DAY_BEFORE_DEADLINE"
    NO_CONSULTATION_SLOT_BEFORE_DEADLINE = "NO_CONSULTATION_SLOT_BEFORE_DEADLINE"
    NO_EXAM_SLOT_BEFORE_DEADLINE = "NO_EXAM_SLOT_BEFORE_DEADLINE"
    NO_MATCHING_BED = "NO_MATCHING_BED"
    NO_BED_NIGHTS_BEFORE_DEADLINE = "NO_BED_NIGHTS_BEFORE_DEADLINE"
    ORDER_INFEASIBLE = "ORDER_INFEASIBLE"
    CAPACITY_TAKEN = "CAPACITY_TAKEN"


# Every soft term the objective is made of, in report order.
TERMS: tuple[str, ...] = (
    "unplaced",
    "wait",
    "trips",
    "fairness",
    "preferred_doctor",
    "expert_level",
    "overflow",
    "bed_equipment",
    "bed_room_size",
    "bed_specialism",
    "bed_transfers",
    "stability",
)


@dataclass(frozen=True)
class ItemAssignment:
    referral_id: str
    item_id: str
    kind: ItemKind
    resource_id: str  # outpatient slot id, exam slot id or bed id
    day: int  # admissions: the day of admission (first night)
    start_minute: int  # admissions: 0
    length_minutes: int  # admissions: 0
    pool: Pool  # which side of the reservation the place is charged to
    nights: tuple[int, ...] = ()  # admissions: the consecutive bed-nights
    moved: bool = False  # a tentative booking that this run moved


# The English and the Chinese sentence of each reason; {deadline} is a day named by the reader.
_TEXTS: dict[ReasonCode, tuple[str, str]] = {
    ReasonCode.NO_PATIENT_DAY_BEFORE_DEADLINE: (
        "The patient can come on no day before the deadline ({deadline}).",
        "截止日（{deadline}）前患者没有可就诊的日期。",
    ),
    ReasonCode.NO_CONSULTATION_SLOT_BEFORE_DEADLINE: (
        "No outpatient slot of {what} is open to this referral on the patient's days before the deadline ({deadline}).",
        "截止日（{deadline}）前，在患者可就诊的日期内没有{what}可用的门诊号源。",
    ),
    ReasonCode.NO_EXAM_SLOT_BEFORE_DEADLINE: (
        "No {what} exam slot is open to this referral on the patient's days before the deadline ({deadline}), allowing for preparation.",
        "考虑检查准备时间后，截止日（{deadline}）前在患者可就诊的日期内没有可用的{what}检查号源。",
    ),
    ReasonCode.NO_MATCHING_BED: (
        "No bed matches the admission (department or specialism, age limits, gender policy, required equipment).",
        "没有符合住院要求（科室或专科、年龄限制、性别安排、必需设备）的床位。",
    ),
    ReasonCode.NO_BED_NIGHTS_BEFORE_DEADLINE: (
        "No matching bed is free for {what} consecutive nights starting before the deadline ({deadline}).",
        "截止日（{deadline}）前没有连续{what}晚空闲且符合要求的床位。",
    ),
    ReasonCode.ORDER_INFEASIBLE: (
        "Each item has free capacity, but not in the required order (exams before the consultation, admission after it, minimum gap) before the deadline ({deadline}).",
        "各项目单独均有号源，但在截止日（{deadline}）前无法按要求的顺序（先检查后就诊、就诊后入院、最小间隔）安排。",
    ),
    ReasonCode.CAPACITY_TAKEN: (
        "The referral fits on its own, but the capacity before the deadline ({deadline}) went to other referrals (more urgent, or better use of the reservation).",
        "该转诊单独可以安排，但截止日（{deadline}）前的号源已分配给其他转诊（更紧急或更能充分利用预留资源）。",
    ),
}


@dataclass(frozen=True)
class UnplacedReferral:
    referral_id: str
    reason: ReasonCode
    deadline_day: int  # the last day the referral's items could have taken place
    item_id: str | None = None  # the item that could not be placed, when one is to blame
    what: str = ""  # the department, modality or number of nights the reason names

    def text(self, language: str = "zh", day: Callable[[int], str] | None = None) -> str:
        """The reason as a sentence; ``day`` names a day index for the reader (the engine
        knows no calendar, so by default "day 3" / "第3天")."""
        en, zh = _TEXTS[self.reason]
        if day is None:
            day = (lambda d: f"day {d}") if language == "en" else (lambda d: f"第{d}天")
        return (en if language == "en" else zh).format(deadline=day(self.deadline_day), what=self.what)

    @property
    def text_en(self) -> str:
        return self.text("en")

    @property
    def text_zh(self) -> str:
        return self.text("zh")


@dataclass(frozen=True)
class Solution:
    solver: str  # "cpsat" or "greedy"
    status: Status
    assignments: tuple[ItemAssignment, ...]
    unplaced: tuple[UnplacedReferral, ...]
    objective: int  # sum of ``terms``
    terms: Mapping[str, int] = field(default_factory=dict)
    bound: float | None = None  # proven lower bound on ``objective`` (CP-SAT, unbatched)
    solve_seconds: float = 0.0
    notes: tuple[str, ...] = ()
    # Referrals with nothing to book (every exam covered by a recognised prior result,
    # no consultation or admission): placed, with no assignment.
    placed_without_items: tuple[str, ...] = ()

    def placed_referral_ids(self) -> frozenset[str]:
        return frozenset(a.referral_id for a in self.assignments) | frozenset(self.placed_without_items)

    def items_of(self, referral_id: str) -> dict[str, ItemAssignment]:
        return {a.item_id: a for a in self.assignments if a.referral_id == referral_id}

    def unplaced_by_id(self) -> dict[str, UnplacedReferral]:
        return {u.referral_id: u for u in self.unplaced}
