"""The scheduling Problem: immutable inputs of one hospital's allocation run.

Time is expressed in whole *day indices* ``0 .. horizon_days - 1`` of the planning horizon
(the service layer maps them to calendar dates) and *minutes after midnight* inside a day.
A night ``n`` is the night that starts on day ``n``.

Capacity units (the only three there are):

* an outpatient slot (one doctor's session, or a sub-slot of it) has ``reserved_places``
  places that any referral may take plus ``overflow_places`` that only green-channel
  referrals may take;
* an exam slot is exactly one place, either in the reserved pool or in the overflow pool;
* a bed is one place per night; each night it is available, it is in the bed's pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Urgency(str, Enum):
    EMERGENCY = "EMERGENCY"
    URGENT = "URGENT"
    ROUTINE = "ROUTINE"


class Title(str, Enum):
    """Doctor's level: an expert (专家号) or a general (普通号) outpatient session."""

    EXPERT = "EXPERT"
    GENERAL = "GENERAL"


class Pool(str, Enum):
    """Which side of the reservation a place belongs to."""

    RESERVED = "RESERVED"  # kept back for referrals; any accepted referral may use it
    OVERFLOW = "OVERFLOW"  # beyond the reservation; green-channel referrals only


class Gender(str, Enum):
    MALE = "M"
    FEMALE = "F"


class GenderPolicy(str, Enum):
    MALE_ONLY = "M"
    FEMALE_ONLY = "F"
    SAME_PER_NIGHT = "D"  # mixed over time, one gender per night
    ANY = "N"


class BookingState(str, Enum):
    FIXED = "FIXED"  # already sent to the patient: never moves
    TENTATIVE = "TENTATIVE"  # may move at the booking's move cost


class ItemKind(str, Enum):
    CONSULTATION = "CONSULTATION"
    EXAM = "EXAM"
    ADMISSION = "ADMISSION"


CONSULTATION_ITEM_ID = "consultation"
ADMISSION_ITEM_ID = "admission"


# --------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class OutpatientSlot:
    slot_id: str
    session_id: str
    department: str
    doctor_id: str
    title: Title
    day: int
    start_minute: int
    length_minutes: int
    reserved_places: int
    overflow_places: int = 0


@dataclass(frozen=True)
class ExamSlot:
    slot_id: str
    modality: str  # "CT", "MRI", "US", "ENDOSCOPY", ...
    device_id: str
    room: str
    day: int
    start_minute: int
    length_minutes: int
    pool: Pool = Pool.RESERVED


@dataclass(frozen=True)
class Department:
    """An inpatient unit's limits; age limits are inclusive, ``None`` means none.

    A room names its clinical department (``Room.department_id``, what an admission's
    ``department`` is matched against) and optionally its ward (``Room.ward_id``). The
    limits and specialisms of a room are those of the Department whose id is the room's
    ward id when it has one, else its department id: so two wards of one department
    each keep their own age limits and specialisms.
    """

    department_id: str
    min_age: int | None = None
    max_age: int | None = None
    # (specialism, priority): priority 1 is the department's core specialism.
    specialisms: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Room:
    room_id: str
    department_id: str
    capacity: int  # number of beds the room is built for; drives the room-size preference
    gender_policy: GenderPolicy = GenderPolicy.ANY
    equipment: frozenset[str] = frozenset()
    # Genders of patients already in the room (not part of this run), by night; they
    # bind SAME_PER_NIGHT rooms.
    occupant_genders: tuple[tuple[int, Gender], ...] = ()
    # The ward the room belongs to: keys the Department entry holding its limits.
    ward_id: str | None = None

    @property
    def unit_id(self) -> str:
        """Id of the Department entry that holds this room's limits and specialisms."""
        return self.ward_id or self.department_id


@dataclass(frozen=True)
class Bed:
    bed_id: str
    room_id: str
    pool: Pool = Pool.RESERVED
    # Nights the bed is free on the bed board; ``None`` = every night of the horizon.
    available_nights: frozenset[int] | None = None


# --------------------------------------------------------------------------- demand


@dataclass(frozen=True)
class ConsultationNeed:
    department: str
    preferred_doctor_id: str | None = None
    preferred_title: Title | None = None
    # Unique inside the referral; a second consultation (another department) needs its own.
    item_id: str = CONSULTATION_ITEM_ID


@dataclass(frozen=True)
class ExamNeed:
    item_id: str  # unique inside the referral, e.g. "exam-ct-1"
    modality: str
    # Days of preparation between acceptance and the exam (bowel prep, fasting, ...).
    preparation_days: int = 0
    # True: the consultation reads the result, so the exam comes first (the usual case).
    before_consultation: bool = True
    # Covered by a recognised prior result (结果互认): no exam is booked.
    recognised_prior_result: bool = False
    # Item ids of the consultations that read (before) or follow (after) the exam;
    # empty = every consultation of the referral.
    read_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdmissionNeed:
    nights: int
    department: str | None = None  # hard when given
    specialism: str | None = None  # soft priority when given; hard if no department given
    required_equipment: frozenset[str] = frozenset()
    preferred_equipment: frozenset[str] = frozenset()
    preferred_room_size: int | None = None


@dataclass(frozen=True)
class Referral:
    referral_id: str
    clinic_id: str
    clinic_distance_km: float
    urgency: Urgency
    accepted_day: int
    available_days: frozenset[int]
    green_channel: bool = False
    consultation: ConsultationNeed | None = None
    exams: tuple[ExamNeed, ...] = ()
    admission: AdmissionNeed | None = None
    patient_gender: Gender | None = None
    patient_age: int | None = None
    # Further consultations (e.g. a second department), each with its own item id; the
    # first one (``consultation``) measures the wait.
    extra_consultations: tuple[ConsultationNeed, ...] = ()

    def all_consultations(self) -> tuple[ConsultationNeed, ...]:
        first = (self.consultation,) if self.consultation is not None else ()
        return first + self.extra_consultations


@dataclass(frozen=True)
class ExistingBooking:
    """A booking made by an earlier run.

    If the referral is part of the Problem, the booking pins (FIXED) or anchors
    (TENTATIVE) that item; otherwise it only consumes capacity.
    """

    referral_id: str
    item_id: str
    resource_id: str  # slot id, or bed id for an admission
    state: BookingState
    start_night: int | None = None  # admissions only
    nights: int | None = None  # admissions only
    move_cost: int | None = None  # TENTATIVE only; None = Weights.tentative_move
    uses_overflow: bool = False  # for capacity accounting of referrals not in the Problem
    patient_gender: Gender | None = None  # binds SAME_PER_NIGHT rooms for absent referrals


@dataclass(frozen=True)
class ClinicQuota:
    """Number of referrals a clinic is entitled to have placed in the horizon."""

    clinic_id: str
    places: int


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Deadlines:
    """Last allowed day of every item, counted from the accepted day (hard; once passed,
    counted again from the hospital's next open day: see ``deadline_day``)."""

    emergency_days: int = 0
    urgent_days: int = 2
    routine_days: int = 14

    def for_urgency(self, urgency: Urgency) -> int:
        return {
            Urgency.EMERGENCY: self.emergency_days,
            Urgency.URGENT: self.urgent_days,
            Urgency.ROUTINE: self.routine_days,
        }[urgency]


@dataclass(frozen=True)
class Weights:
    """Integer cost units of each soft term (all terms are minimised together)."""

    wait_per_day_emergency: int = 200
    wait_per_day_urgent: int = 40
    wait_per_day_routine: int = 4
    unplaced_emergency: int = 100_000
    unplaced_urgent: int = 30_000
    unplaced_routine: int = 10_000
    trip_base: int = 10
    trip_per_10_km: int = 2  # a 170 km township pays 10 + 34 per trip
    fairness_per_point: int = 20  # per percentage point of the worst clinic's shortfall
    preferred_doctor: int = 6
    expert_level: int = 6
    overflow_use: int = 2  # keeps overflow for when the reservation is really full
    bed_preferred_equipment_per_night: int = 2  # per missing item
    bed_room_size_per_night: int = 1  # room larger than preferred
    bed_specialism_per_step_per_night: int = 1
    tentative_move: int = 30

    def wait_per_day(self, urgency: Urgency) -> int:
        return {
            Urgency.EMERGENCY: self.wait_per_day_emergency,
            Urgency.URGENT: self.wait_per_day_urgent,
            Urgency.ROUTINE: self.wait_per_day_routine,
        }[urgency]

    def unplaced(self, urgency: Urgency) -> int:
        return {
            Urgency.EMERGENCY: self.unplaced_emergency,
            Urgency.URGENT: self.unplaced_urgent,
            Urgency.ROUTINE: self.unplaced_routine,
        }[urgency]

    def trip_cost(self, distance_km: float) -> int:
        return self.trip_base + round(self.trip_per_10_km * distance_km / 10.0)


@dataclass(frozen=True)
class Config:
    deadlines: Deadlines = field(default_factory=Deadlines)
    weights: Weights = field(default_factory=Weights)
    min_gap_minutes: int = 30  # between two items of one referral on one day


@dataclass(frozen=True)
class Problem:
    horizon_days: int
    referrals: tuple[Referral, ...]
    outpatient_slots: tuple[OutpatientSlot, ...] = ()
    exam_slots: tuple[ExamSlot, ...] = ()
    departments: tuple[Department, ...] = ()
    rooms: tuple[Room, ...] = ()
    beds: tuple[Bed, ...] = ()
    existing: tuple[ExistingBooking, ...] = ()
    quotas: tuple[ClinicQuota, ...] = ()
    config: Config = field(default_factory=Config)
    # The first day with an outpatient or exam slot of the hospital still to start (1 once
    # today's last has begun, more over a weekend), taken or not: a window that closes
    # before it is counted again from it.
    first_open_day: int = 0


def deadline_day(problem: Problem, referral: Referral) -> int:
    """Last day (inclusive) any item of the referral may take place: its urgency's window
    from the day it was accepted. A referral still waiting once that window has closed (an
    emergency accepted after the day's last session, capacity that never freed up) gets
    the same window again from the hospital's next open day: it goes to the first place
    free, not to none, and an evening emergency is booked at once into the next morning
    rather than after midnight."""
    window = problem.config.deadlines.for_urgency(referral.urgency)
    last = referral.accepted_day + window
    if last < problem.first_open_day:
        last = problem.first_open_day + window
    return min(last, problem.horizon_days - 1)


def exams_to_book(referral: Referral) -> tuple[ExamNeed, ...]:
    return tuple(e for e in referral.exams if not e.recognised_prior_result)
