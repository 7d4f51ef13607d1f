"""Candidate placements of every item, filtered by the hard rules that concern one item
alone (deadline, patient's days, preparation, pool, bed attributes, free capacity left by
bookings outside the run), each carrying its own share of the soft terms.

Both solvers start from these options, and the scorer prices a solution with the very
same numbers, so CP-SAT's objective and the reported terms always agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import ADMISSION_ITEM_ID, AdmissionNeed, Bed, BookingState, ConsultationNeed, Department, ExamNeed
from .model import ExamSlot, ExistingBooking, Gender, GenderPolicy, ItemKind, OutpatientSlot, Pool, Problem
from .model import Referral, Room, Title, deadline_day, exams_to_book

MINUTES_PER_DAY = 1440


@dataclass(frozen=True)
class Option:
    resource_id: str
    day: int
    start_minute: int
    length_minutes: int
    pool: Pool
    nights: tuple[int, ...] = ()
    room_id: str | None = None
    costs: tuple[tuple[str, int], ...] = ()

    @property
    def abs_start(self) -> int:
        return self.day * MINUTES_PER_DAY + self.start_minute

    @property
    def abs_end(self) -> int:
        return self.abs_start + self.length_minutes

    @property
    def cost(self) -> int:
        return sum(c for _, c in self.costs)

    def same_place(self, booking: ExistingBooking) -> bool:
        if self.resource_id != booking.resource_id:
            return False
        return booking.start_night is None or (self.nights[:1] == (booking.start_night,))


@dataclass(frozen=True)
class ItemOptions:
    item_id: str
    kind: ItemKind
    options: tuple[Option, ...]
    # Exams: whether the consultation reads this exam (so it comes first).
    before_consultation: bool = True
    pinned: bool = False  # a FIXED booking: the only option is where it already is
    # Exams: the consultations the order applies to (empty: all of the referral's).
    read_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReferralOptions:
    referral: Referral
    items: tuple[ItemOptions, ...]
    # Item whose day measures the referral's waiting time.
    anchor_item_id: str | None = None
    trip_cost: int = 0
    forced: bool = False  # carries a FIXED booking: must stay placed

    def item(self, item_id: str) -> ItemOptions | None:
        return next((i for i in self.items if i.item_id == item_id), None)


@dataclass
class BaseUsage:
    """Capacity already consumed by bookings of referrals outside the run."""

    outpatient_nongreen: dict[str, int] = field(default_factory=dict)
    outpatient_green: dict[str, int] = field(default_factory=dict)
    exam_taken: set[str] = field(default_factory=set)
    bed_nights_taken: set[tuple[str, int]] = field(default_factory=set)
    room_genders: dict[tuple[str, int], set[Gender]] = field(default_factory=dict)


@dataclass(frozen=True)
class Catalog:
    """Resources indexed for lookup."""

    outpatient: dict[str, OutpatientSlot]
    exams: dict[str, ExamSlot]
    departments: dict[str, Department]
    rooms: dict[str, Room]
    beds: dict[str, Bed]
    outpatient_by_department: dict[str, tuple[OutpatientSlot, ...]]
    exams_by_modality: dict[str, tuple[ExamSlot, ...]]

    def unit_of(self, room: Room) -> Department:
        """The Department entry (ward, else department) holding the room's limits."""
        return self.departments.get(room.unit_id, Department(room.unit_id))

    @staticmethod
    def of(problem: Problem) -> Catalog:
        by_dept: dict[str, list[OutpatientSlot]] = {}
        for s in problem.outpatient_slots:
            by_dept.setdefault(s.department, []).append(s)
        by_mod: dict[str, list[ExamSlot]] = {}
        for e in problem.exam_slots:
            by_mod.setdefault(e.modality, []).append(e)
        return Catalog(
            outpatient={s.slot_id: s for s in problem.outpatient_slots},
            exams={e.slot_id: e for e in problem.exam_slots},
            departments={d.department_id: d for d in problem.departments},
            rooms={r.room_id: r for r in problem.rooms},
            beds={b.bed_id: b for b in problem.beds},
            outpatient_by_department={
                k: tuple(sorted(v, key=lambda s: (s.day, s.start_minute, s.slot_id)))
                for k, v in by_dept.items()
            },
            exams_by_modality={
                k: tuple(sorted(v, key=lambda s: (s.day, s.start_minute, s.slot_id)))
                for k, v in by_mod.items()
            },
        )


def base_usage(problem: Problem, catalog: Catalog) -> BaseUsage:
    in_run = {r.referral_id for r in problem.referrals}
    usage = BaseUsage()
    for room in problem.rooms:
        for night, gender in room.occupant_genders:
            usage.room_genders.setdefault((room.room_id, night), set()).add(gender)
    for b in problem.existing:
        if b.referral_id in in_run:
            continue
        if b.resource_id in catalog.outpatient:
            target = usage.outpatient_green if b.uses_overflow else usage.outpatient_nongreen
            target[b.resource_id] = target.get(b.resource_id, 0) + 1
        elif b.resource_id in catalog.exams:
            usage.exam_taken.add(b.resource_id)
        elif b.resource_id in catalog.beds and b.start_night is not None:
            room_id = catalog.beds[b.resource_id].room_id
            for n in range(b.start_night, b.start_night + (b.nights or 1)):
                usage.bed_nights_taken.add((b.resource_id, n))
                if b.patient_gender is not None:
                    usage.room_genders.setdefault((room_id, n), set()).add(b.patient_gender)
    return usage


# --------------------------------------------------------------------------- option costs


def consultation_costs(problem: Problem, need: ConsultationNeed | None, slot: OutpatientSlot) -> list[tuple[str, int]]:
    w = problem.config.weights
    costs: list[tuple[str, int]] = []
    if need is not None and need.preferred_doctor_id and slot.doctor_id != need.preferred_doctor_id:
        costs.append(("preferred_doctor", w.preferred_doctor))
    if need is not None and need.preferred_title == Title.EXPERT and slot.title != Title.EXPERT:
        costs.append(("expert_level", w.expert_level))
    return costs


def specialism_steps(department: Department, specialism: str | None) -> int | None:
    """Priority steps above the department's best specialism; None = not offered."""
    if specialism is None:
        return 0
    priorities = [p for s, p in department.specialisms if s == specialism]
    return min(priorities) - 1 if priorities else None


def bed_costs(problem: Problem, need: AdmissionNeed, room: Room, department: Department, pool: Pool) -> list[tuple[str, int]]:
    w = problem.config.weights
    costs: list[tuple[str, int]] = []
    missing = len(need.preferred_equipment - room.equipment)
    if missing:
        costs.append(("bed_equipment", w.bed_preferred_equipment_per_night * missing * need.nights))
    if need.preferred_room_size is not None and room.capacity > need.preferred_room_size:
        costs.append(("bed_room_size", w.bed_room_size_per_night * need.nights))
    steps = specialism_steps(department, need.specialism) or 0
    if steps:
        costs.append(("bed_specialism", w.bed_specialism_per_step_per_night * steps * need.nights))
    if pool == Pool.OVERFLOW:
        costs.append(("overflow", w.overflow_use))
    return costs


def bed_admits(referral: Referral, need: AdmissionNeed, room: Room, department: Department) -> bool:
    """Hard bed attributes: department/specialism, age limits, gender policy, equipment."""
    if need.department is not None:
        if room.department_id != need.department:
            return False
    elif specialism_steps(department, need.specialism) is None:
        return False
    age = referral.patient_age
    if department.min_age is not None and (age is None or age < department.min_age):
        return False
    if department.max_age is not None and (age is None or age > department.max_age):
        return False
    policy = room.gender_policy
    gender = referral.patient_gender
    if policy == GenderPolicy.MALE_ONLY and gender != Gender.MALE:
        return False
    if policy == GenderPolicy.FEMALE_ONLY and gender != Gender.FEMALE:
        return False
    if policy == GenderPolicy.SAME_PER_NIGHT and gender is None:
        return False
    return need.required_equipment <= room.equipment


# --------------------------------------------------------------------------- options


def _window(problem: Problem, referral: Referral, earliest: int) -> list[int]:
    last = deadline_day(problem, referral)
    return [d for d in range(max(earliest, 0), last + 1) if d in referral.available_days]


def _with_extra(problem: Problem, referral: Referral, item_id: str, base: list[tuple[str, int]], day: int, is_anchor: bool, tentative: ExistingBooking | None, option: Option) -> Option:
    costs = list(base)
    if is_anchor and day > referral.accepted_day:
        costs.append(("wait", problem.config.weights.wait_per_day(referral.urgency) * (day - referral.accepted_day)))
    if tentative is not None and not option.same_place(tentative):
        move = tentative.move_cost if tentative.move_cost is not None else problem.config.weights.tentative_move
        costs.append(("stability", move))
    return Option(**{**option.__dict__, "costs": tuple(costs)})


def _consultation_options(problem: Problem, cat: Catalog, usage: BaseUsage, referral: Referral, need: ConsultationNeed) -> list[tuple[Option, list[tuple[str, int]]]]:
    days = set(_window(problem, referral, referral.accepted_day))
    out = []
    for s in cat.outpatient_by_department.get(need.department, ()):
        if s.day not in days:
            continue
        ng = usage.outpatient_nongreen.get(s.slot_id, 0)
        total = ng + usage.outpatient_green.get(s.slot_id, 0)
        free = (s.reserved_places + s.overflow_places - total) if referral.green_channel else min(
            s.reserved_places - ng, s.reserved_places + s.overflow_places - total
        )
        if free <= 0:
            continue
        opt = Option(s.slot_id, s.day, s.start_minute, s.length_minutes, Pool.RESERVED)
        out.append((opt, consultation_costs(problem, need, s)))
    return out


def _exam_options(problem: Problem, cat: Catalog, usage: BaseUsage, referral: Referral, need: ExamNeed) -> list[tuple[Option, list[tuple[str, int]]]]:
    days = set(_window(problem, referral, referral.accepted_day + need.preparation_days))
    w = problem.config.weights
    out = []
    for s in cat.exams_by_modality.get(need.modality, ()):
        if s.day not in days or s.slot_id in usage.exam_taken:
            continue
        if s.pool == Pool.OVERFLOW and not referral.green_channel:
            continue
        costs = [("overflow", w.overflow_use)] if s.pool == Pool.OVERFLOW else []
        out.append((Option(s.slot_id, s.day, s.start_minute, s.length_minutes, s.pool), costs))
    return out


def _admission_options(problem: Problem, cat: Catalog, usage: BaseUsage, referral: Referral) -> list[tuple[Option, list[tuple[str, int]]]]:
    need = referral.admission
    assert need is not None
    days = _window(problem, referral, referral.accepted_day)
    out = []
    for bed in problem.beds:
        if bed.pool == Pool.OVERFLOW and not referral.green_channel:
            continue
        room = cat.rooms[bed.room_id]
        dept = cat.unit_of(room)
        if not bed_admits(referral, need, room, dept):
            continue
        costs = bed_costs(problem, need, room, dept, bed.pool)
        for start in days:
            nights = tuple(range(start, start + need.nights))
            if nights[-1] >= problem.horizon_days:
                continue
            if bed.available_nights is not None and not all(n in bed.available_nights for n in nights):
                continue
            if any((bed.bed_id, n) in usage.bed_nights_taken for n in nights):
                continue
            if room.gender_policy == GenderPolicy.SAME_PER_NIGHT and any(
                usage.room_genders.get((room.room_id, n), set()) - {referral.patient_gender} for n in nights
            ):
                continue
            out.append((Option(bed.bed_id, start, 0, 0, bed.pool, nights, room.room_id), costs))
    return out


def _pinned_option(problem: Problem, cat: Catalog, referral: Referral, kind: ItemKind, booking: ExistingBooking, need: ConsultationNeed | None = None) -> tuple[Option, list[tuple[str, int]]]:
    rid = booking.resource_id
    if kind == ItemKind.CONSULTATION and rid in cat.outpatient:
        s = cat.outpatient[rid]
        return Option(rid, s.day, s.start_minute, s.length_minutes, Pool.RESERVED), consultation_costs(problem, need, s)
    if kind == ItemKind.EXAM and rid in cat.exams:
        e = cat.exams[rid]
        costs = [("overflow", problem.config.weights.overflow_use)] if e.pool == Pool.OVERFLOW else []
        return Option(rid, e.day, e.start_minute, e.length_minutes, e.pool), costs
    if kind == ItemKind.ADMISSION and rid in cat.beds and booking.start_night is not None and referral.admission:
        bed = cat.beds[rid]
        room = cat.rooms[bed.room_id]
        dept = cat.unit_of(room)
        nights = tuple(range(booking.start_night, booking.start_night + referral.admission.nights))
        return Option(rid, booking.start_night, 0, 0, bed.pool, nights, room.room_id), bed_costs(problem, referral.admission, room, dept, bed.pool)
    raise ValueError(f"fixed booking of {booking.referral_id}/{booking.item_id} names unknown resource {rid}")


def referral_options(problem: Problem, cat: Catalog, usage: BaseUsage, referral: Referral, max_options: int | None = None, keep: dict[str, Option] | None = None) -> ReferralOptions:
    """All candidate options of one referral.

    ``max_options`` keeps the cheapest (then earliest) options of each item; options in
    ``keep`` (e.g. the greedy hint) survive the cut.
    """
    bookings = {(b.referral_id, b.item_id): b for b in problem.existing if b.referral_id == referral.referral_id}
    consults = {c.item_id: c for c in referral.all_consultations()}
    exams = {e.item_id: e for e in exams_to_book(referral)}
    specs = item_specs(referral)
    anchor = _anchor_item(referral, specs)
    items = []
    forced = False
    for item_id, kind, before in specs:
        booking = bookings.get((referral.referral_id, item_id))
        if booking is not None and booking.state == BookingState.FIXED:
            raw = [_pinned_option(problem, cat, referral, kind, booking, consults.get(item_id))]
            tentative = None
            forced = True
        else:
            if kind == ItemKind.CONSULTATION:
                raw = _consultation_options(problem, cat, usage, referral, consults[item_id])
            elif kind == ItemKind.EXAM:
                raw = _exam_options(problem, cat, usage, referral, exams[item_id])
            else:
                raw = _admission_options(problem, cat, usage, referral)
            tentative = booking
        opts = [_with_extra(problem, referral, item_id, c, o.day, item_id == anchor, tentative, o) for o, c in raw]
        opts.sort(key=lambda o: (o.abs_start, o.resource_id))
        if max_options is not None and len(opts) > max_options:
            opts = _cut(opts, max_options, (keep or {}).get(item_id), tentative)
        read_by = tuple(r for r in exams[item_id].read_by if r in consults) if kind == ItemKind.EXAM else ()
        items.append(ItemOptions(item_id, kind, tuple(opts), before, pinned=tentative is None and booking is not None, read_by=read_by))
    return ReferralOptions(
        referral=referral,
        items=tuple(items),
        anchor_item_id=anchor,
        trip_cost=problem.config.weights.trip_cost(referral.clinic_distance_km),
        forced=forced and all(i.options for i in items),
    )


def item_specs(referral: Referral) -> list[tuple[str, ItemKind, bool]]:
    """(item id, kind, before the consultation) of every item to book, in booking order:
    consultations, exams, admission."""
    specs: list[tuple[str, ItemKind, bool]] = [(c.item_id, ItemKind.CONSULTATION, True) for c in referral.all_consultations()]
    specs.extend((e.item_id, ItemKind.EXAM, e.before_consultation) for e in exams_to_book(referral))
    if referral.admission is not None:
        specs.append((ADMISSION_ITEM_ID, ItemKind.ADMISSION, True))
    return specs


def skeleton(problem: Problem, referral: Referral) -> ReferralOptions:
    """The referral's items without their candidate options: enough to price a placement
    (the chosen options carry their own costs), not to search one."""
    specs = item_specs(referral)
    read_by = {e.item_id: e.read_by for e in referral.exams}
    return ReferralOptions(
        referral=referral,
        items=tuple(ItemOptions(i, k, (), b, read_by=read_by.get(i, ())) for i, k, b in specs),
        anchor_item_id=_anchor_item(referral, specs),
        trip_cost=problem.config.weights.trip_cost(referral.clinic_distance_km),
    )


def _cut(opts: list[Option], limit: int, keep: Option | None, tentative: ExistingBooking | None) -> list[Option]:
    """The cheapest (then earliest) options of every day, an equal share per day.

    Spread over days rather than globally, or a busy modality would keep only its first
    morning's slots and lose every chance of bundling with a later consultation.
    """
    by_day: dict[int, list[Option]] = {}
    for o in opts:
        by_day.setdefault(o.day, []).append(o)
    per_day = max(1, -(-limit // len(by_day)))
    chosen: list[Option] = []
    for day_opts in by_day.values():
        ranked = sorted(day_opts, key=lambda o: (o.cost, o.abs_start, o.resource_id))
        chosen.extend(ranked[:per_day])
        chosen.extend(o for o in ranked[per_day:] if o == keep or (tentative is not None and o.same_place(tentative)))
    return sorted(chosen, key=lambda o: (o.abs_start, o.resource_id))


def _anchor_item(referral: Referral, specs: list[tuple[str, ItemKind, bool]]) -> str | None:
    """The first consultation if any, else the admission, else the last exam."""
    kinds: dict[ItemKind, str] = {}
    for item_id, kind, _ in specs:
        kinds.setdefault(kind, item_id)
    if ItemKind.EXAM in kinds:
        kinds[ItemKind.EXAM] = [i for i, k, _ in specs if k == ItemKind.EXAM][-1]
    for kind in (ItemKind.CONSULTATION, ItemKind.ADMISSION):
        if kind in kinds:
            return kinds[kind]
    return specs[-1][0] if specs else None
