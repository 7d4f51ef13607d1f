"""The allocation engine: a pure function from a Problem to a Solution.

No I/O, no asyncio, no database, no protobuf: the service layer turns its rows into a
:class:`Problem` and a :class:`Solution` back into bookings. All ids are strings; days
are indices ``0 .. horizon_days - 1`` of the planning horizon, times are minutes after
midnight, night ``n`` starts on day ``n``.

Public API
----------
``solve(problem: Problem, params: SolverParams = SolverParams()) -> Solution``
    CP-SAT optimisation (``cpsat.py``). ``SolverParams(time_limit_seconds=10.0,
    num_workers=2, random_seed=0, max_options_per_item=150, batch_size=1500,
    greedy_hint=True, deterministic=True, deterministic_time_limit=None,
    lns_neighbourhood=60, lns_step_budget=0.25, log_search=False)``. Deterministic by
    default: the budget is CP-SAT work units (``deterministic_time_limit``, else
    ``time_limit_seconds * 0.5``), spent on the whole model (single worker) and then on
    a seeded large-neighbourhood search (``lns.py``); one seed, one Solution, on any
    machine (the wall clock is only a safety cap at twice the time limit, noted when it
    cuts). ``deterministic=False``: the parallel portfolio on ``num_workers`` threads
    for ``time_limit_seconds``.
``solve_greedy(problem: Problem) -> Solution``
    First-come-first-served baseline (``greedy.py``): what a booking desk does today;
    near-linear through a free-capacity index (``freeindex.py``).
``parse_pas(text) -> PasInstance``, ``solve_pas(instance, ...)``, ``solve_pas_greedy``,
``score_pas`` (``pas.py``): the Patient Admission Scheduling benchmark of Demeester et
al. (2010), importer and literature scorer.

Problem (``model.py``, frozen dataclasses)
    ``Problem(horizon_days, referrals, outpatient_slots, exam_slots, departments, rooms,
    beds, existing, quotas, config)``.
    Resources and their capacity unit: ``OutpatientSlot`` (``reserved_places`` for any
    referral + ``overflow_places`` for the green channel only), ``ExamSlot`` (one place,
    ``pool`` RESERVED or OVERFLOW), ``Bed`` (one place per night, ``pool``,
    ``available_nights``) in a ``Room`` (capacity, ``GenderPolicy`` M/F/D/N, equipment)
    of a ``Department`` (age limits, specialisms with priorities).
    Rooms name their department (matched by an admission's department) and their ward
    (``Room.ward_id``); limits come from the ``Department`` entry keyed by the ward id
    when given, so wards of one department keep their own age limits.
    Demand: ``Referral`` (clinic and its distance, ``Urgency``, green channel, accepted
    day, the patient's available days, gender, age) with its needs
    ``ConsultationNeed`` (``consultation`` and ``extra_consultations``, each with its
    own ``item_id``), ``ExamNeed`` (modality, preparation days, before/after the
    consultations in ``read_by``, default all, covered by a recognised prior result) and
    ``AdmissionNeed`` (nights,
    department or specialism, required/preferred equipment, preferred room size).
    ``ExistingBooking`` (FIXED: never moves; TENTATIVE: moves at ``move_cost``; for a
    referral not in the run it only consumes capacity), ``ClinicQuota``, and
    ``Config(deadlines=Deadlines(...), weights=Weights(...), min_gap_minutes)``.

Solution (``solution.py``)
    ``Solution(solver, status, assignments, unplaced, objective, terms, bound,
    solve_seconds, notes)``: one ``ItemAssignment`` per booked item (resource id, day,
    start, length, pool charged, bed-nights, moved), one ``UnplacedReferral`` per
    waitlisted referral with a ``ReasonCode`` and an English and a Chinese sentence,
    the objective broken down by the names in ``TERMS``. A referral is placed whole or
    not at all. A referral with nothing to book (every exam covered by a recognised
    result, no consultation or admission) counts as placed, has no assignments and is
    listed in ``Solution.placed_without_items`` (so ``placed_referral_ids()`` has it).

Hard rules: capacity and pools; the patient's available days; deadlines by urgency
(a referral waiting past its deadline gets its urgency's window again from today);
exam preparation days; exams before (or after) the consultation with a minimum gap on
one day; admission not before the consultation; a stay is consecutive nights in one
bed (so transfers are zero by construction); bed department or specialism, age
limits, gender policy, required equipment; FIXED bookings.
Soft terms (``Weights``): unplaced (by urgency), wait (days from acceptance to the
consultation, else admission, else last exam, by urgency), trips (distinct days the
patient comes, priced by the clinic's distance), fairness (worst clinic's shortfall
against its quota, in percentage points), preferred doctor, expert level, use of
overflow places, bed preferred equipment, room larger than preferred, department
specialism priority, stability (moving a TENTATIVE booking).
"""

from .cpsat import SolverParams, solve
from .greedy import solve_greedy
from .model import (
    ADMISSION_ITEM_ID,
    CONSULTATION_ITEM_ID,
    AdmissionNeed,
    Bed,
    BookingState,
    ClinicQuota,
    Config,
    ConsultationNeed,
    Deadlines,
    Department,
    ExamNeed,
    ExamSlot,
    ExistingBooking,
    Gender,
    GenderPolicy,
    ItemKind,
    OutpatientSlot,
    Pool,
    Problem,
    Referral,
    Room,
    Title,
    Urgency,
    Weights,
    deadline_day,
)
from .pas import PasInstance, PasResult, parse_pas, score_pas, solve_pas, solve_pas_greedy
from .solution import TERMS, ItemAssignment, ReasonCode, Solution, Status, UnplacedReferral

__all__ = [
    "ADMISSION_ITEM_ID",
    "CONSULTATION_ITEM_ID",
    "TERMS",
    "AdmissionNeed",
    "Bed",
    "BookingState",
    "ClinicQuota",
    "Config",
    "ConsultationNeed",
    "Deadlines",
    "Department",
    "ExamNeed",
    "ExamSlot",
    "ExistingBooking",
    "Gender",
    "GenderPolicy",
    "ItemAssignment",
    "ItemKind",
    "OutpatientSlot",
    "PasInstance",
    "PasResult",
    "Pool",
    "Problem",
    "ReasonCode",
    "Referral",
    "Room",
    "Solution",
    "SolverParams",
    "Status",
    "Title",
    "UnplacedReferral",
    "Urgency",
    "Weights",
    "deadline_day",
    "parse_pas",
    "score_pas",
    "solve",
    "solve_greedy",
    "solve_pas",
    "solve_pas_greedy",
]
