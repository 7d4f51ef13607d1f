"""The engine's output: what goes where, what it costs term by term, and what waits."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping

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


@dataclass(frozen=True)
class UnplacedReferral:
    referral_id: str
    reason: ReasonCode
    text_en: str
    text_zh: str
    item_id: str | None = None  # the item that could not be placed, when one is to blame


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
