"""Patient Admission Scheduling (Demeester, Souffriau, De Causmaecker, Vanden Berghe 2010).

Importer for the ``ARTICLE BENCHMARK DATA SET`` text format, a scorer with the
literature's weights, a CP-SAT model and a greedy baseline. Pure: takes the file's text.

File format (confirmed on the six instances of the benchmark):

* header lines ``Rooms: n``, ``Roomproperties: n``, ``Beds: n``, ``Departments: n``,
  ``Specialisms: n``, ``Patients: n``, ``Planning horizon: n``;
* ``SPECIALISMS:`` ``id name``;
* ``DEPARTMENTS:`` ``id name minAge maxAge | (priority specialism)*`` (age 0 = no limit);
* ``ROOMPROPERTIES:`` ``id name``;
* ``ROOMS:`` ``id name | capacity | department | policy | (priority specialism)* |
  flag per property`` (policy N any, M male only, F female only, D one gender a night);
* ``BEDS:`` ``id room``;
* ``PATIENTS:`` ``id name age gender | arrival departure | count (specialism nights)* |
  preferred max capacity | required flag per property | preferred flag per property``;
  the patient stays the nights ``arrival .. departure - 1``; a patient with
  ``arrival == departure`` occupies no bed-night and costs nothing;
* ``END.``

Cost, every term per patient-night unless said otherwise (``WEIGHTS``):

* ``gender`` 5.0: in an M (F) room each female (male) patient-night; in a D room, for
  each night, the patients of the gender in the minority (5 x min(#male, #female));
* ``required_property`` 5.0 per required property the room lacks;
* ``age`` 10.0 when the patient's age is outside the department's limits;
* ``preferred_property`` 2.0 per preferred property the room lacks;
* ``room_capacity`` 0.8 per capacity category above the preference: the number of
  distinct room capacities of the instance that are larger than the preferred maximum
  and at most the room's capacity (preference 1, categories 1/2/4, room of 4: 2 steps);
* ``department_specialism`` 1.0 per priority step of the night's specialism in the
  room's department (priority 1 costs 0, priority p costs p - 1; a department without
  the specialism counts as one step beyond the worst priority any department lists);
* ``room_specialism`` 1.0 per priority step, counted the same way on the room's list;
* ``transfer`` 11.0 per change of bed between two consecutive nights of a stay.

A bed holds one patient a night (hard). The CP-SAT model keeps each patient in one room
for the whole stay and gives beds inside the room by start time (always possible: the
stays are intervals), so its solutions have no transfers, and its proven bound is a
bound over such no-transfer schedules only.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

WEIGHTS: dict[str, float] = {
    "gender": 5.0,
    "required_property": 5.0,
    "age": 10.0,
    "preferred_property": 2.0,
    "room_capacity": 0.8,
    "department_specialism": 1.0,
    "room_specialism": 1.0,
    "transfer": 11.0,
}
_SCALE = 10  # every weight is a multiple of 0.1: CP-SAT works in tenths


@dataclass(frozen=True)
class PasDepartment:
    department_id: int
    name: str
    min_age: int | None
    max_age: int | None
    specialisms: tuple[tuple[int, int], ...]  # (specialism, priority)


@dataclass(frozen=True)
class PasRoom:
    room_id: int
    name: str
    capacity: int
    department_id: int
    gender_policy: str
    specialisms: tuple[tuple[int, int], ...]
    properties: frozenset[int]


@dataclass(frozen=True)
class PasPatient:
    patient_id: int
    name: str
    age: int
    gender: str
    arrival: int
    departure: int
    parts: tuple[tuple[int, int], ...]  # (specialism, nights)
    preferred_capacity: int
    required: frozenset[int]
    preferred: frozenset[int]

    @property
    def nights(self) -> tuple[int, ...]:
        return tuple(range(self.arrival, self.departure))

    def specialism_on(self, night: int) -> int:
        offset = night - self.arrival
        for spec, n in self.parts:
            if offset < n:
                return spec
            offset -= n
        return self.parts[-1][0]


@dataclass(frozen=True)
class PasInstance:
    name: str
    header: dict[str, int]
    specialisms: dict[int, str]
    departments: dict[int, PasDepartment]
    properties: dict[int, str]
    rooms: dict[int, PasRoom]
    beds: dict[int, int]  # bed -> room
    patients: tuple[PasPatient, ...]
    horizon: int


@dataclass(frozen=True)
class PasResult:
    solver: str
    cost: float
    terms: dict[str, float]
    bound: float | None
    status: str
    seconds: float
    beds: dict[int, tuple[int, ...]] = field(default_factory=dict)  # patient -> bed per night

    @property
    def gap(self) -> float | None:
        if self.bound is None or self.cost <= 0:
            return None
        return max(0.0, (self.cost - self.bound) / self.cost)


# --------------------------------------------------------------------------- importer


def _pairs(tokens: list[str]) -> tuple[tuple[int, int], ...]:
    """``priority specialism`` pairs, returned as (specialism, priority)."""
    nums = [int(t) for t in tokens]
    return tuple((nums[i + 1], nums[i]) for i in range(0, len(nums) - 1, 2))


def _flags(field_text: str, names: dict[int, str]) -> frozenset[int]:
    flags = [int(t) for t in field_text.split()]
    return frozenset(pid for pid, flag in zip(sorted(names), flags) if flag)


def parse_pas(text: str, name: str = "") -> PasInstance:
    lines = [ln.strip() for ln in text.splitlines()]
    if not lines or lines[0] != "ARTICLE BENCHMARK DATA SET":
        raise ValueError("not a PAS benchmark file: first line must be 'ARTICLE BENCHMARK DATA SET'")
    header: dict[str, int] = {}
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for ln in lines[1:]:
        if not ln or ln == "END.":
            continue
        if ln.endswith(":") and ln[:-1].isupper():
            current = ln[:-1]
            sections[current] = []
        elif current is None:
            key, _, value = ln.partition(":")
            header[key.strip()] = int(value)
        else:
            sections[current].append(ln)
    specialisms = {int(ln.split()[0]): ln.split()[1] for ln in sections["SPECIALISMS"]}
    departments = {}
    for ln in sections["DEPARTMENTS"]:
        head, _, specs = ln.partition("|")
        did, dname, lo, hi = head.split()
        departments[int(did)] = PasDepartment(int(did), dname, int(lo) or None, int(hi) or None, _pairs(specs.split()))
    properties = {int(ln.split()[0]): ln.split()[1] for ln in sections["ROOMPROPERTIES"]}
    rooms = {}
    for ln in sections["ROOMS"]:
        head, cap, dept, policy, specs, flags = (f.strip() for f in ln.split("|"))
        rid, rname = head.split()
        rooms[int(rid)] = PasRoom(int(rid), rname, int(cap), int(dept), policy, _pairs(specs.split()), _flags(flags, properties))
    beds = {int(ln.split()[0]): int(ln.split()[1]) for ln in sections["BEDS"]}
    patients = []
    for ln in sections["PATIENTS"]:
        head, stay, parts, pref_cap, required, preferred = (f.strip() for f in ln.split("|"))
        pid, pname, age, gender = head.split()
        arrival, departure = (int(t) for t in stay.split())
        part_tokens = [int(t) for t in parts.split()]
        count = part_tokens[0]
        part_pairs = tuple((part_tokens[1 + 2 * i], part_tokens[2 + 2 * i]) for i in range(count))
        if sum(n for _, n in part_pairs) != departure - arrival:
            raise ValueError(f"patient {pid}: parts do not add up to the stay")
        patients.append(
            PasPatient(int(pid), pname, int(age), gender, arrival, departure, part_pairs, int(pref_cap),
                       _flags(required, properties), _flags(preferred, properties))
        )
    instance = PasInstance(name, header, specialisms, departments, properties, rooms, beds, tuple(patients), header["Planning horizon"])
    _check_counts(instance)
    return instance


def _check_counts(inst: PasInstance) -> None:
    expected = {
        "Rooms": len(inst.rooms),
        "Roomproperties": len(inst.properties),
        "Beds": len(inst.beds),
        "Departments": len(inst.departments),
        "Specialisms": len(inst.specialisms),
        "Patients": len(inst.patients),
    }
    for key, found in expected.items():
        if inst.header.get(key) != found:
            raise ValueError(f"header says {key}: {inst.header.get(key)}, file holds {found}")


# --------------------------------------------------------------------------- costs


@dataclass(frozen=True)
class _Tables:
    capacities: tuple[int, ...]
    dept_missing: int
    room_missing: int
    beds_of_room: dict[int, tuple[int, ...]]

    @staticmethod
    def of(inst: PasInstance) -> _Tables:
        beds_of: dict[int, list[int]] = {}
        for bed, room in sorted(inst.beds.items()):
            beds_of.setdefault(room, []).append(bed)
        dept_prios = [p for d in inst.departments.values() for _, p in d.specialisms] or [1]
        room_prios = [p for r in inst.rooms.values() for _, p in r.specialisms] or [1]
        return _Tables(
            capacities=tuple(sorted({r.capacity for r in inst.rooms.values()})),
            dept_missing=max(dept_prios),
            room_missing=max(room_prios),
            beds_of_room={k: tuple(v) for k, v in beds_of.items()},
        )


def _steps(specs: tuple[tuple[int, int], ...], spec: int, missing: int) -> int:
    prios = [p for s, p in specs if s == spec]
    return min(prios) - 1 if prios else missing


def night_costs(inst: PasInstance, tables: _Tables, patient: PasPatient, room: PasRoom, night: int) -> dict[str, float]:
    """Every per-night term except gender (which depends on the room's other patients)."""
    dept = inst.departments[room.department_id]
    spec = patient.specialism_on(night)
    age_bad = (dept.min_age is not None and patient.age < dept.min_age) or (dept.max_age is not None and patient.age > dept.max_age)
    return {
        "required_property": WEIGHTS["required_property"] * len(patient.required - room.properties),
        "age": WEIGHTS["age"] * age_bad,
        "preferred_property": WEIGHTS["preferred_property"] * len(patient.preferred - room.properties),
        "room_capacity": WEIGHTS["room_capacity"] * sum(1 for c in tables.capacities if patient.preferred_capacity < c <= room.capacity),
        "department_specialism": WEIGHTS["department_specialism"] * _steps(dept.specialisms, spec, tables.dept_missing),
        "room_specialism": WEIGHTS["room_specialism"] * _steps(room.specialisms, spec, tables.room_missing),
    }


def _stay_cost(inst: PasInstance, tables: _Tables, patient: PasPatient, room: PasRoom) -> float:
    fixed_gender = 0.0
    if (room.gender_policy == "M" and patient.gender == "F") or (room.gender_policy == "F" and patient.gender == "M"):
        fixed_gender = WEIGHTS["gender"] * len(patient.nights)
    return fixed_gender + sum(sum(night_costs(inst, tables, patient, room, n).values()) for n in patient.nights)


def score_pas(inst: PasInstance, beds: dict[int, tuple[int, ...]]) -> dict[str, float]:
    """Cost terms of a schedule: ``beds[patient] = bed for each night of the stay``.

    Raises ValueError if a bed holds two patients in a night or a patient with nights
    is not assigned.
    """
    tables = _Tables.of(inst)
    terms = {k: 0.0 for k in WEIGHTS}
    occupied: set[tuple[int, int]] = set()
    room_night_genders: dict[tuple[int, int], list[str]] = {}
    for p in inst.patients:
        if not p.nights:
            continue
        per_night = beds.get(p.patient_id)
        if per_night is None or len(per_night) != len(p.nights):
            raise ValueError(f"patient {p.patient_id} is not assigned for every night")
        for night, bed in zip(p.nights, per_night):
            if (bed, night) in occupied:
                raise ValueError(f"bed {bed} holds two patients on night {night}")
            occupied.add((bed, night))
            room = inst.rooms[inst.beds[bed]]
            for k, v in night_costs(inst, tables, p, room, night).items():
                terms[k] += v
            room_night_genders.setdefault((room.room_id, night), []).append(p.gender)
        terms["transfer"] += WEIGHTS["transfer"] * sum(1 for a, b in zip(per_night, per_night[1:]) if a != b)
    for (room_id, _), genders in room_night_genders.items():
        terms["gender"] += WEIGHTS["gender"] * _gender_conflicts(inst.rooms[room_id].gender_policy, genders)
    return {k: round(v, 6) for k, v in terms.items()}


def _gender_conflicts(policy: str, genders: list[str]) -> int:
    males = genders.count("M")
    females = len(genders) - males
    if policy == "M":
        return females
    if policy == "F":
        return males
    if policy == "D":
        return min(males, females)
    return 0


def _beds_within_rooms(inst: PasInstance, tables: _Tables, rooms_of: dict[int, int]) -> dict[int, tuple[int, ...]]:
    """Beds inside each room by arrival (interval colouring: never fails under capacity)."""
    by_id = {p.patient_id: p for p in inst.patients}
    free_from: dict[int, int] = {b: -1 for b in inst.beds}
    out: dict[int, tuple[int, ...]] = {}
    for pid in sorted(rooms_of, key=lambda q: (by_id[q].arrival, q)):
        p = by_id[pid]
        bed = next(b for b in tables.beds_of_room[rooms_of[pid]] if free_from[b] <= p.arrival)
        free_from[bed] = p.departure
        out[pid] = tuple(bed for _ in p.nights)
    return out


# --------------------------------------------------------------------------- greedy


def solve_pas_greedy(inst: PasInstance) -> PasResult:
    """Patients by arrival; each to the cheapest room with a bed free for the whole stay
    (gender conflicts it would add included), else night by night (with transfers)."""
    started = time.perf_counter()
    tables = _Tables.of(inst)
    occupied: set[tuple[int, int]] = set()
    genders: dict[tuple[int, int], list[str]] = {}
    out: dict[int, tuple[int, ...]] = {}
    for p in sorted(inst.patients, key=lambda q: (q.arrival, q.patient_id)):
        if not p.nights:
            continue
        best: tuple[float, int, int] | None = None
        for room in inst.rooms.values():
            bed = next((b for b in tables.beds_of_room.get(room.room_id, ()) if all((b, n) not in occupied for n in p.nights)), None)
            if bed is None:
                continue
            cost = _stay_cost(inst, tables, p, room) + _added_gender(room, p, p.nights, genders)
            if best is None or (cost, room.room_id) < (best[0], best[1]):
                best = (cost, room.room_id, bed)
        if best is not None:
            plan = tuple(best[2] for _ in p.nights)
        else:
            plan = tuple(_cheapest_bed_for_night(inst, tables, p, n, occupied, genders) for n in p.nights)
        for n, bed in zip(p.nights, plan):
            occupied.add((bed, n))
            genders.setdefault((inst.beds[bed], n), []).append(p.gender)
        out[p.patient_id] = plan
    terms = score_pas(inst, out)
    return PasResult("greedy", round(sum(terms.values()), 6), terms, None, "FEASIBLE", time.perf_counter() - started, out)


def _added_gender(room: PasRoom, p: PasPatient, nights: tuple[int, ...], genders: dict[tuple[int, int], list[str]]) -> float:
    if room.gender_policy != "D":
        return 0.0
    added = 0
    for n in nights:
        now = genders.get((room.room_id, n), [])
        added += _gender_conflicts("D", now + [p.gender]) - _gender_conflicts("D", now)
    return WEIGHTS["gender"] * added


def _cheapest_bed_for_night(inst: PasInstance, tables: _Tables, p: PasPatient, night: int, occupied: set[tuple[int, int]], genders: dict[tuple[int, int], list[str]]) -> int:
    best: tuple[float, int] | None = None
    for bed, room_id in sorted(inst.beds.items()):
        if (bed, night) in occupied:
            continue
        room = inst.rooms[room_id]
        cost = sum(night_costs(inst, tables, p, room, night).values()) + _added_gender(room, p, (night,), genders)
        if best is None or cost < best[0]:
            best = (cost, bed)
    if best is None:
        raise ValueError(f"no free bed on night {night}: the instance is over capacity")
    return best[1]


# --------------------------------------------------------------------------- CP-SAT


def solve_pas(inst: PasInstance, time_limit_seconds: float = 60.0, num_workers: int = 2, random_seed: int = 0, hint: PasResult | None = None, lns_share: float = 0.3) -> PasResult:
    """Room per patient (no transfers), minimising the literature's cost.

    The whole model runs for ``(1 - lns_share)`` of the time limit; unless it proved
    optimality, the rest goes to a seeded large-neighbourhood search (``_lns``) that frees
    a window of patients, re-solves them with everybody else fixed and keeps only
    improvements. The bound is the whole model's (still valid: the LNS only moves the
    primal)."""
    started = time.perf_counter()
    tables = _Tables.of(inst)
    hint = hint or solve_pas_greedy(inst)
    staying = [p for p in inst.patients if p.nights]
    rooms = [r for r in inst.rooms.values() if tables.beds_of_room.get(r.room_id)]
    m = cp_model.CpModel()
    x: dict[tuple[int, int], cp_model.IntVar] = {}
    obj: list[cp_model.LinearExprT] = []
    present: dict[tuple[int, int], list[tuple[cp_model.IntVar, str]]] = {}
    for p in staying:
        for room in rooms:
            v = m.NewBoolVar("")
            x[p.patient_id, room.room_id] = v
            obj.append(round(_SCALE * _stay_cost(inst, tables, p, room)) * v)
            for n in p.nights:
                present.setdefault((room.room_id, n), []).append((v, p.gender))
        m.AddExactlyOne(x[p.patient_id, r.room_id] for r in rooms)
    gender_w = round(_SCALE * WEIGHTS["gender"])
    gender_vars: dict[tuple[int, int], tuple[cp_model.IntVar, cp_model.IntVar]] = {}
    for (room_id, night), uses in present.items():
        cap = len(tables.beds_of_room[room_id])
        if len(uses) > cap:
            m.Add(sum(v for v, _ in uses) <= cap)
        if inst.rooms[room_id].gender_policy != "D" or len({g for _, g in uses}) < 2:
            continue
        males = sum(v for v, g in uses if g == "M")
        females = sum(v for v, g in uses if g == "F")
        male_night = m.NewBoolVar("")
        conflicts = m.NewIntVar(0, cap, "")
        gender_vars[room_id, night] = (male_night, conflicts)
        # The cheaper of the two choices is min(#male, #female): the minority pays.
        m.Add(conflicts >= females - cap * (1 - male_night))
        m.Add(conflicts >= males - cap * male_night)
        obj.append(gender_w * conflicts)
    _add_hint(m, inst, hint, x, rooms, gender_vars)
    m.Minimize(sum(obj))
    solver = cp_model.CpSolver()
    lns_share = min(max(lns_share, 0.0), 1.0)
    solve_started = time.perf_counter()
    solver.parameters.max_time_in_seconds = time_limit_seconds * (1.0 - lns_share)
    solver.parameters.num_workers = num_workers
    solver.parameters.random_seed = random_seed
    code = solver.Solve(m)
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        if lns_share <= 0 or any(len(set(plan)) > 1 for plan in hint.beds.values()):
            return PasResult("cpsat", hint.cost, hint.terms, None, "NO_SOLUTION(greedy returned)", time.perf_counter() - started, hint.beds)
        # The whole model found nothing in its share: the LNS starts from the greedy rooms.
        rooms_of = _lns(inst, tables, rooms, staying, {pid: inst.beds[plan[0]] for pid, plan in hint.beds.items()}, solve_started + time_limit_seconds, num_workers, random_seed)
        beds = _beds_within_rooms(inst, tables, rooms_of)
        terms = score_pas(inst, beds)
        if sum(terms.values()) >= hint.cost:
            return PasResult("cpsat", hint.cost, hint.terms, None, "NO_SOLUTION(greedy returned)", time.perf_counter() - started, hint.beds)
        return PasResult("cpsat", round(sum(terms.values()), 6), terms, None, "FEASIBLE(greedy+LNS)", time.perf_counter() - started, beds)
    rooms_of = {p.patient_id: next(r.room_id for r in rooms if solver.BooleanValue(x[p.patient_id, r.room_id])) for p in staying}
    if code != cp_model.OPTIMAL and lns_share > 0:
        rooms_of = _lns(inst, tables, rooms, staying, rooms_of, solve_started + time_limit_seconds, num_workers, random_seed)
    beds = _beds_within_rooms(inst, tables, rooms_of)
    terms = score_pas(inst, beds)
    bound = math.floor(solver.BestObjectiveBound() + 1e-6) / _SCALE
    status = "OPTIMAL" if code == cp_model.OPTIMAL else "FEASIBLE"
    return PasResult("cpsat", round(sum(terms.values()), 6), terms, bound, status, time.perf_counter() - started, beds)


def _add_hint(m: cp_model.CpModel, inst: PasInstance, hint: PasResult, x: dict[tuple[int, int], cp_model.IntVar], rooms: list[PasRoom], gender_vars: dict[tuple[int, int], tuple[cp_model.IntVar, cp_model.IntVar]]) -> None:
    """Hint a transfer-free schedule completely (a partial hint is often lost)."""
    if any(len(set(plan)) > 1 for plan in hint.beds.values()):
        return
    genders: dict[tuple[int, int], list[str]] = {}
    by_id = {p.patient_id: p for p in inst.patients}
    for pid, plan in hint.beds.items():
        hinted_room = inst.beds[plan[0]]
        for room in rooms:
            m.AddHint(x[pid, room.room_id], room.room_id == hinted_room)
        for n in by_id[pid].nights:
            genders.setdefault((hinted_room, n), []).append(by_id[pid].gender)
    for key, (male_night, conflicts) in gender_vars.items():
        present = genders.get(key, [])
        males, females = present.count("M"), present.count("F")
        m.AddHint(male_night, males >= females)
        m.AddHint(conflicts, min(males, females))


# --------------------------------------------------------------------------- LNS


_LNS_CHEAPEST = 10  # open rooms per freed patient besides the window's own rooms


class _Objective:
    """The CP-SAT objective (tenths) of a room per patient, with cached stay costs."""

    def __init__(self, inst: PasInstance, tables: _Tables, rooms: list[PasRoom]) -> None:
        self.inst, self.tables, self.rooms = inst, tables, rooms
        self.cap = {r.room_id: len(tables.beds_of_room[r.room_id]) for r in rooms}
        self._stay: dict[tuple[int, int], int] = {}

    def stay(self, p: PasPatient, room: PasRoom) -> int:
        key = (p.patient_id, room.room_id)
        if key not in self._stay:
            self._stay[key] = round(_SCALE * _stay_cost(self.inst, self.tables, p, room))
        return self._stay[key]

    def total(self, staying: list[PasPatient], rooms_of: dict[int, int]) -> int:
        genders: dict[tuple[int, int], list[str]] = {}
        value = 0
        for p in staying:
            room = self.inst.rooms[rooms_of[p.patient_id]]
            value += self.stay(p, room)
            if room.gender_policy == "D":
                for n in p.nights:
                    genders.setdefault((room.room_id, n), []).append(p.gender)
        gender_w = round(_SCALE * WEIGHTS["gender"])
        return value + gender_w * sum(_gender_conflicts("D", g) for g in genders.values())


def _lns_window(inst: PasInstance, staying: list[PasPatient], rooms_of: dict[int, int], rng: random.Random, size: int) -> list[PasPatient]:
    """Patients to free: those overlapping a random range of nights, or those lying in
    one random department's rooms (half the draws each), cut to ``size`` at random."""
    if rng.random() < 0.5:
        first = rng.randrange(inst.horizon)
        last = first + rng.randint(1, 7)
        pool = [p for p in staying if p.arrival < last and p.departure > first]
    else:
        dept = rng.choice(sorted(inst.departments))
        pool = [p for p in staying if inst.rooms[rooms_of[p.patient_id]].department_id == dept]
        if rng.random() < 0.5:  # a night range inside the department keeps the window local
            first = rng.randrange(inst.horizon)
            last = first + rng.randint(7, 21)
            pool = [p for p in pool if p.arrival < last and p.departure > first] or pool
    if len(pool) > size:
        pool = rng.sample(pool, size)
    return pool


def _lns(inst: PasInstance, tables: _Tables, rooms: list[PasRoom], staying: list[PasPatient], rooms_of: dict[int, int], deadline: float, num_workers: int, random_seed: int) -> dict[int, int]:
    """Free a window of patients, re-solve their rooms with the others fixed (capacity
    and gender counts of the fixed patients as constants), keep strict improvements."""
    rng = random.Random(random_seed)
    objective = _Objective(inst, tables, rooms)
    current = dict(rooms_of)
    best = objective.total(staying, current)
    gender_w = round(_SCALE * WEIGHTS["gender"])
    size = 40
    iteration = 0
    while True:
        remaining = deadline - time.perf_counter()
        if remaining < 0.2:
            break
        iteration += 1
        window = _lns_window(inst, staying, current, rng, size)
        if not window:
            continue
        free = {p.patient_id for p in window}
        occupied: dict[tuple[int, int], int] = {}
        fixed_genders: dict[tuple[int, int], list[str]] = {}
        for p in staying:
            if p.patient_id in free:
                continue
            rid = current[p.patient_id]
            for n in p.nights:
                occupied[rid, n] = occupied.get((rid, n), 0) + 1
                fixed_genders.setdefault((rid, n), []).append(p.gender)
        m = cp_model.CpModel()
        x: dict[tuple[int, int], cp_model.IntVar] = {}
        obj: list[cp_model.LinearExprT] = []
        present: dict[tuple[int, int], list[tuple[cp_model.IntVar, str]]] = {}
        window_rooms = {current[p.patient_id] for p in window}
        for p in window:
            choices = []
            open_rooms = [r for r in rooms if all(occupied.get((r.room_id, n), 0) < objective.cap[r.room_id] for n in p.nights)]
            # The window's own rooms (to swap within) and the patient's cheapest open rooms.
            cheapest = {r.room_id for r in sorted(open_rooms, key=lambda r: (objective.stay(p, r), r.room_id))[:_LNS_CHEAPEST]}
            for room in open_rooms:
                if room.room_id not in window_rooms and room.room_id not in cheapest:
                    continue
                v = m.NewBoolVar("")
                x[p.patient_id, room.room_id] = v
                choices.append(v)
                obj.append(objective.stay(p, room) * v)
                for n in p.nights:
                    present.setdefault((room.room_id, n), []).append((v, p.gender))
            m.AddExactlyOne(choices)
        for (room_id, night), uses in present.items():
            cap = objective.cap[room_id]
            left = cap - occupied.get((room_id, night), 0)
            if len(uses) > left:
                m.Add(sum(v for v, _ in uses) <= left)
            fixed = fixed_genders.get((room_id, night), [])
            if inst.rooms[room_id].gender_policy != "D" or len({g for _, g in uses} | set(fixed)) < 2:
                continue
            males = fixed.count("M") + sum(v for v, g in uses if g == "M")
            females = fixed.count("F") + sum(v for v, g in uses if g == "F")
            male_night = m.NewBoolVar("")
            conflicts = m.NewIntVar(0, cap, "")
            m.Add(conflicts >= females - cap * (1 - male_night))
            m.Add(conflicts >= males - cap * male_night)
            obj.append(gender_w * conflicts)
            now = fixed + [p.gender for p in window if current[p.patient_id] == room_id and p.arrival <= night < p.departure]
            m.AddHint(male_night, now.count("M") >= now.count("F"))
            m.AddHint(conflicts, _gender_conflicts("D", now))
        for p in window:  # the current rooms are a feasible start
            for room in rooms:
                if (p.patient_id, room.room_id) in x:
                    m.AddHint(x[p.patient_id, room.room_id], room.room_id == current[p.patient_id])
        m.Minimize(sum(obj))
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = min(1.0, remaining - 0.1)
        solver.parameters.num_workers = num_workers
        solver.parameters.random_seed = random_seed + iteration
        code = solver.Solve(m)
        if code == cp_model.OPTIMAL:
            size = min(size + 5, 400)
        elif code == cp_model.FEASIBLE:
            size = max(size - 5, 15)
        if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            continue
        candidate = dict(current)
        for p in window:
            candidate[p.patient_id] = next(r.room_id for r in rooms if (p.patient_id, r.room_id) in x and solver.BooleanValue(x[p.patient_id, r.room_id]))
        value = objective.total(staying, candidate)
        if value < best:
            best, current = value, candidate
    return current
