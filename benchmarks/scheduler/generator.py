"""Seeded, deterministic consortium instances for the scheduler benchmark.

A county consortium (1 lead hospital, 12 township clinics at 20-170 km) and a city one
(4 lead hospitals, 23 community clinics at 2-30 km, each clinic bound to one hospital).
Each hospital yields one :class:`Problem`: outpatient slots of six departments (an
expert and a general doctor, hourly slots, AM and PM), exam slots of four modalities,
beds in wards with rooms of 1/2/4 beds under the four gender policies, part of them
occupied at the start, and referrals accepted over ``accept_days`` days with mixed
urgency, needs and patient availability. Capacity is sized from the demand (``load``
= demand / reserved capacity over the horizon), so every size is equally tight.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from services.scheduling.engine import (
    AdmissionNeed,
    Bed,
    ClinicQuota,
    ConsultationNeed,
    Department,
    ExamNeed,
    ExamSlot,
    Gender,
    GenderPolicy,
    OutpatientSlot,
    Pool,
    Problem,
    Referral,
    Room,
    Title,
    Urgency,
)

DEPARTMENTS = ("CARD", "RESP", "GI", "NEURO", "ORTHO", "ENDO")
SPECIALISM_OF = {d: d.lower() for d in DEPARTMENTS}
MODALITIES = {"CT": (0.40, 20, 0), "US": (0.35, 20, 0), "MRI": (0.15, 40, 0), "ENDOSCOPY": (0.10, 40, 1)}
HOURS_AM = (480, 540, 600, 660)
HOURS_PM = (840, 900, 960)


@dataclass(frozen=True)
class ConsortiumSpec:
    name: str
    hospitals: int
    clinics: int
    km_min: float
    km_max: float


COUNTY = ConsortiumSpec("county 1+12", 1, 12, 20.0, 170.0)
CITY = ConsortiumSpec("city 4+23", 4, 23, 2.0, 30.0)


def generate_consortium(spec: ConsortiumSpec, n_referrals: int, seed: int, accept_days: int = 7, horizon_days: int = 21, load: float = 0.9) -> list[Problem]:
    """One Problem per hospital; clinics are dealt to hospitals in turn."""
    rng = random.Random(seed)
    clinics = [(f"clinic-{i + 1:02d}", round(rng.uniform(spec.km_min, spec.km_max), 1), rng.uniform(0.5, 2.0)) for i in range(spec.clinics)]
    problems = []
    for h in range(spec.hospitals):
        mine = clinics[h::spec.hospitals]
        share = sum(c[2] for c in mine) / sum(c[2] for c in clinics)
        problems.append(
            generate_hospital(f"H{h + 1}", mine, round(n_referrals * share), rng.randrange(2**31), accept_days, horizon_days, load)
        )
    return problems


def generate_hospital(hospital: str, clinics: list[tuple[str, float, float]], n_referrals: int, seed: int, accept_days: int = 7, horizon_days: int = 21, load: float = 0.9) -> Problem:
    rng = random.Random(seed)
    referrals = tuple(_referral(rng, f"{hospital}-R{i + 1:05d}", clinics, accept_days, horizon_days) for i in range(n_referrals))
    n_consult = sum(r.consultation is not None for r in referrals)
    exam_demand = {m: sum(1 for r in referrals for e in r.exams if e.modality == m and not e.recognised_prior_result) for m in MODALITIES}
    bed_nights = sum(r.admission.nights for r in referrals if r.admission)
    weight = {c[0]: c[2] for c in clinics}
    quotas = tuple(ClinicQuota(cid, round(0.9 * n_referrals * weight[cid] / sum(weight.values()))) for cid in weight)
    depts, rooms, beds = _wards(rng, hospital, bed_nights, horizon_days, load)
    return Problem(
        horizon_days=horizon_days,
        referrals=referrals,
        outpatient_slots=_outpatient(hospital, n_consult, horizon_days, load),
        exam_slots=_exams(hospital, exam_demand, horizon_days, load),
        departments=depts,
        rooms=rooms,
        beds=beds,
        quotas=quotas,
    )


def _working(day: int) -> bool:
    return day % 7 < 5


def _outpatient(hospital: str, demand: int, horizon: int, load: float) -> tuple[OutpatientSlot, ...]:
    work_days = [d for d in range(horizon) if _working(d)]
    slots_per_day = len(DEPARTMENTS) * 2 * len(HOURS_AM + HOURS_PM)
    places = max(1, math.ceil(demand / load / (slots_per_day * len(work_days))))
    out = []
    for d in work_days:
        for dept in DEPARTMENTS:
            for doctor, title in ((f"{dept}-expert", Title.EXPERT), (f"{dept}-general", Title.GENERAL)):
                for start in HOURS_AM + HOURS_PM:
                    sid = f"{hospital}-{doctor}-d{d}-{start}"
                    out.append(OutpatientSlot(sid, f"{hospital}-{doctor}-d{d}-{'AM' if start < 720 else 'PM'}", dept, f"{hospital}-{doctor}", title, d, start, 15, places, max(1, places // 3)))
    return tuple(out)


def _exams(hospital: str, demand: dict[str, int], horizon: int, load: float) -> tuple[ExamSlot, ...]:
    out = []
    for modality, (_, length, _) in MODALITIES.items():
        per_device_day = (720 - 480) // length + (1020 - 840) // length
        needed = demand[modality] / load / horizon
        devices = max(1, math.ceil(needed / per_device_day))
        for d in range(horizon):
            for dev in range(devices):
                starts = list(range(480, 720, length)) + list(range(840, 1020, length))
                for k, start in enumerate(starts):
                    pool = Pool.OVERFLOW if k % 8 == 7 else Pool.RESERVED
                    out.append(ExamSlot(f"{hospital}-{modality}{dev}-d{d}-{start}", modality, f"{hospital}-{modality}{dev}", f"{modality}-room-{dev}", d, start, length, pool))
    return tuple(out)


def _wards(rng: random.Random, hospital: str, bed_nights: int, horizon: int, load: float) -> tuple[tuple[Department, ...], tuple[Room, ...], tuple[Bed, ...]]:
    per_dept = max(2, math.ceil(bed_nights / load / horizon / len(DEPARTMENTS) * 1.4))  # 30 % already occupied
    depts = []
    rooms = []
    beds = []
    for i, dept in enumerate(DEPARTMENTS):
        neighbour = DEPARTMENTS[(i + 1) % len(DEPARTMENTS)]
        depts.append(Department(f"{hospital}-{dept}", min_age=14, max_age=None, specialisms=((SPECIALISM_OF[dept], 1), (SPECIALISM_OF[neighbour], 2))))
        made = 0
        r = 0
        while made < per_dept:
            size = rng.choice((1, 2, 2, 4, 4))
            policy = rng.choice((GenderPolicy.SAME_PER_NIGHT, GenderPolicy.SAME_PER_NIGHT, GenderPolicy.MALE_ONLY, GenderPolicy.FEMALE_ONLY, GenderPolicy.ANY))
            equipment = frozenset(e for e in ("oxygen", "telemetry") if rng.random() < 0.4)
            room_id = f"{hospital}-{dept}-room{r}"
            rooms.append(Room(room_id, f"{hospital}-{dept}", size, policy, equipment))
            for b in range(size):
                busy_until = rng.choice((0, 0, 1, 2, 3, 5)) if rng.random() < 0.3 else 0
                pool = Pool.OVERFLOW if (made + b) % 10 == 9 else Pool.RESERVED
                beds.append(Bed(f"{room_id}-bed{b}", room_id, pool, frozenset(range(busy_until, horizon)) if busy_until else None))
            made += size
            r += 1
    return tuple(depts), tuple(rooms), tuple(beds)


def _referral(rng: random.Random, rid: str, clinics: list[tuple[str, float, float]], accept_days: int, horizon: int) -> Referral:
    clinic_id, km, _ = rng.choices(clinics, weights=[c[2] for c in clinics])[0]
    u = rng.random()
    urgency = Urgency.EMERGENCY if u < 0.05 else Urgency.URGENT if u < 0.25 else Urgency.ROUTINE
    green = (urgency == Urgency.EMERGENCY and rng.random() < 0.6) or (urgency == Urgency.URGENT and rng.random() < 0.2)
    accepted = rng.choice([d for d in range(accept_days) if _working(d)] or [0])
    dept = rng.choice(DEPARTMENTS)
    if urgency == Urgency.EMERGENCY:
        days = frozenset(range(horizon))
    else:
        days = frozenset(d for d in range(horizon) if rng.random() < 0.7) | {accepted + 1 if accepted + 1 < horizon else accepted}
    consultation = None
    if rng.random() < 0.9:
        consultation = ConsultationNeed(
            dept,
            preferred_doctor_id=f"{dept}-expert" if rng.random() < 0.1 else None,
            preferred_title=Title.EXPERT if rng.random() < 0.3 else None,
        )
    exams = []
    for k in range(rng.choices((0, 1, 2), weights=(0.35, 0.5, 0.15))[0]):
        modality = rng.choices(list(MODALITIES), weights=[m[0] for m in MODALITIES.values()])[0]
        exams.append(ExamNeed(f"exam-{k + 1}", modality, preparation_days=MODALITIES[modality][2], recognised_prior_result=rng.random() < 0.2))
    admission = None
    gender = rng.choice((Gender.MALE, Gender.FEMALE))
    age = rng.randint(18, 90)
    if rng.random() < 0.15 or consultation is None:
        admission = AdmissionNeed(
            nights=rng.randint(2, 7),
            specialism=SPECIALISM_OF[dept],
            required_equipment=frozenset({"oxygen"}) if rng.random() < 0.1 else frozenset(),
            preferred_equipment=frozenset({"telemetry"}) if rng.random() < 0.2 else frozenset(),
            preferred_room_size=rng.choice((1, 2)) if rng.random() < 0.3 else None,
        )
    return Referral(rid, clinic_id, km, urgency, accepted, days, green, consultation, tuple(exams), admission, gender, age)
