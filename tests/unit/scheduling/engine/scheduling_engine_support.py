"""Small builders and a solution checker for the engine tests."""

from __future__ import annotations

from collections import Counter

from services.scheduling.engine import (
    Bed,
    ExamSlot,
    GenderPolicy,
    ItemKind,
    OutpatientSlot,
    Pool,
    Problem,
    Referral,
    Room,
    Solution,
    Title,
    Urgency,
)

ALL_DAYS = frozenset(range(7))


def slot(slot_id: str, day: int, start: int = 480, reserved: int = 1, overflow: int = 0, doctor: str = "dr-a", title: Title = Title.GENERAL, department: str = "CARD") -> OutpatientSlot:
    return OutpatientSlot(slot_id, f"session-{slot_id}", department, doctor, title, day, start, 15, reserved, overflow)


def exam(slot_id: str, day: int, start: int = 420, pool: Pool = Pool.RESERVED, modality: str = "CT", length: int = 20) -> ExamSlot:
    return ExamSlot(slot_id, modality, f"{modality}-1", "R1", day, start, length, pool)


def referral(referral_id: str, urgency: Urgency = Urgency.ROUTINE, accepted: int = 0, days: frozenset[int] = ALL_DAYS, **kw) -> Referral:
    kw.setdefault("clinic_id", "clinic-1")
    kw.setdefault("clinic_distance_km", 50.0)
    clinic = kw.pop("clinic_id")
    km = kw.pop("clinic_distance_km")
    return Referral(referral_id, clinic, km, urgency, accepted, days, **kw)


def room(room_id: str, policy: GenderPolicy = GenderPolicy.ANY, capacity: int = 2, department: str = "MED", equipment: frozenset[str] = frozenset()) -> Room:
    return Room(room_id, department, capacity, policy, equipment)


def bed(bed_id: str, room_id: str, nights: frozenset[int] | None = None, pool: Pool = Pool.RESERVED) -> Bed:
    return Bed(bed_id, room_id, pool, nights)


def check_valid(problem: Problem, solution: Solution) -> None:
    """Every hard rule the tests rely on, checked on the output alone."""
    slots = {s.slot_id: s for s in problem.outpatient_slots}
    refs = {r.referral_id: r for r in problem.referrals}
    outpatient = Counter()
    green = Counter()
    exams = Counter()
    bed_nights = Counter()
    for a in solution.assignments:
        r = refs[a.referral_id]
        if a.kind == ItemKind.CONSULTATION:
            outpatient[a.resource_id] += 1
            green[a.resource_id] += r.green_channel
        elif a.kind == ItemKind.EXAM:
            exams[a.resource_id] += 1
        else:
            for n in a.nights:
                bed_nights[a.resource_id, n] += 1
        assert a.day in r.available_days
    for sid, used in outpatient.items():
        s = slots[sid]
        assert used <= s.reserved_places + s.overflow_places
        assert used - green[sid] <= s.reserved_places
    assert all(v == 1 for v in exams.values())
    assert all(v == 1 for v in bed_nights.values())
    placed = solution.placed_referral_ids()
    waitlisted = {u.referral_id for u in solution.unplaced}
    assert not placed & waitlisted
    assert sum(solution.terms.values()) == solution.objective
