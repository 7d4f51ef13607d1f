"""Between the database and the engine: rows and referral snapshots in, a Problem out;
the engine's assignments back as concrete places, days and nights.

Day 0 of the Problem is today's local date; the horizon is SchedulerSettings.horizon_days.
Capacity handed to the engine is already net of every booking that may not move, so
the engine needs no ExistingBooking for them; bookings that may move (tentative ones in
a re-optimisation) come as TENTATIVE ExistingBookings together with their referrals.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta

from common.v1 import types_pb2
from referral.v1 import types_pb2 as rtypes
from services.scheduling import engine
from services.scheduling.adapters import repository as repo
from services.scheduling.domain import calendar, exam_rules
from services.scheduling.domain.beds import BedStatus, first_bookable_night
from services.scheduling.domain.policy import ReservationPolicy

_URGENCY = {types_pb2.URGENCY_EMERGENCY: engine.Urgency.EMERGENCY,
            types_pb2.URGENCY_URGENT: engine.Urgency.URGENT}
_GENDER = {rtypes.GENDER_MALE: engine.Gender.MALE, rtypes.GENDER_FEMALE: engine.Gender.FEMALE}
_POLICY = {"MALE": engine.GenderPolicy.MALE_ONLY, "FEMALE": engine.GenderPolicy.FEMALE_ONLY,
           "SAME_GENDER": engine.GenderPolicy.SAME_PER_NIGHT, "ANY": engine.GenderPolicy.ANY}
_POOL = {"reserved": engine.Pool.RESERVED, "overflow": engine.Pool.OVERFLOW}


@dataclass
class Horizon:
    today: date
    days: int

    @property
    def start(self) -> datetime:
        return calendar.at(self.today, 0)

    @property
    def end(self) -> datetime:
        return calendar.at(self.today + timedelta(days=self.days), 0)

    def index(self, day: date) -> int:
        return calendar.day_index(self.today, day)

    def date(self, index: int) -> date:
        return calendar.day_at(self.today, index)


@dataclass
class Demand:
    """A referral as the engine sees it, and how its engine item ids map to need ids."""
    referral: engine.Referral
    need_of_item: dict[str, str] = field(default_factory=dict)
    gender: str | None = None
    # Preparation rules and contraindications (domain/exam_rules.py).
    verdict: exam_rules.Verdict = field(default_factory=exam_rules.Verdict)

    @property
    def contraindicated(self) -> bool:
        return bool(self.verdict.contraindicated)


def exam_verdict(snapshot: rtypes.ReferralSnapshot,
                 rules: dict[str, exam_rules.ModalityRules]) -> exam_rules.Verdict:
    exams = [(n.need_id, n.exam.modality, n.covered_by_prior_result) for n in snapshot.needs
             if n.WhichOneof("kind") == "exam"]
    prior = {code for n in snapshot.needs if n.WhichOneof("kind") == "exam" and n.covered_by_prior_result
             and (code := exam_rules.result_code(n.exam.modality))}
    return exam_rules.check(exams, prior, exam_rules.conditions_of_diagnosis(snapshot.diagnosis_code), rules)


def referral_demand(snapshot: rtypes.ReferralSnapshot, accepted_at: datetime, horizon: Horizon,
                    prep_days: dict[str, int], available: list[types_pb2.Date] | None = None,
                    rules: dict[str, exam_rules.ModalityRules] | None = None) -> Demand:
    verdict = exam_verdict(snapshot, rules or {})
    emergency = snapshot.urgency == types_pb2.URGENCY_EMERGENCY
    need_of_item: dict[str, str] = {}
    consultations: list[engine.ConsultationNeed] = []
    exams: list[engine.ExamNeed] = []
    admission = None
    for need in snapshot.needs:
        kind = need.WhichOneof("kind")
        if kind == "consultation":
            # The first consultation keeps the engine's default item id (it measures the
            # wait); a further one (another department) is keyed by its need id. Every
            # exam comes before every consultation (each may read it).
            c = need.consultation
            item_id = engine.CONSULTATION_ITEM_ID if not consultations else f"consultation-{need.need_id}"
            consultations.append(engine.ConsultationNeed(
                department=c.department, preferred_doctor_id=c.doctor_id or None,
                preferred_title=engine.Title.EXPERT if c.expert else None, item_id=item_id))
            need_of_item[item_id] = need.need_id
        elif kind == "exam":
            prep = prep_days.get(need.exam.modality, 0)
            if need.need_id in verdict.unmet and not emergency:
                prep = max(prep, 1)  # a day for the missing lab result (exam_rules.py)
            exams.append(engine.ExamNeed(
                item_id=need.need_id, modality=need.exam.modality, preparation_days=prep,
                recognised_prior_result=need.covered_by_prior_result))
            need_of_item[need.need_id] = need.need_id
        elif kind == "admission" and admission is None:
            a = need.admission
            admission = engine.AdmissionNeed(
                nights=max(1, a.expected_nights), department=a.department or None,
                required_equipment=frozenset(a.required_equipment),
                preferred_equipment=frozenset(a.preferred_equipment))
            need_of_item[engine.ADMISSION_ITEM_ID] = need.need_id
    dates = available if available is not None else list(snapshot.available_dates)
    if dates:
        days = frozenset(i for d in dates
                         if 0 <= (i := horizon.index(date(d.year, d.month, d.day))) < horizon.days)
    else:
        days = frozenset(range(horizon.days))
    gender = _GENDER.get(snapshot.patient.gender)
    referral = engine.Referral(
        referral_id=snapshot.referral_id, clinic_id=snapshot.sending_institution_id,
        clinic_distance_km=max(0.0, snapshot.clinic_distance_km),
        urgency=_URGENCY.get(snapshot.urgency, engine.Urgency.ROUTINE),
        accepted_day=min(0, horizon.index(calendar.local_date(accepted_at))),
        available_days=days, green_channel=snapshot.green_channel,
        consultation=consultations[0] if consultations else None, extra_consultations=tuple(consultations[1:]),
        exams=tuple(exams), admission=admission, patient_gender=gender,
        patient_age=snapshot.patient.age_years or None)
    return Demand(referral, need_of_item, gender.value if gender else None, verdict)


@dataclass
class Capacity:
    outpatient: tuple[engine.OutpatientSlot, ...]
    exams: tuple[engine.ExamSlot, ...]
    departments: tuple[engine.Department, ...]
    rooms: tuple[engine.Room, ...]
    beds: tuple[engine.Bed, ...]
    prep_days: dict[str, int]
    exam_rules: dict[str, exam_rules.ModalityRules] = field(default_factory=dict)
    policies: dict[str, ReservationPolicy] = field(default_factory=dict)
    first_open_day: int = 0  # engine.Problem.first_open_day


async def policies(conn, hospital_id: str) -> dict[str, ReservationPolicy]:
    from services.scheduling.service_layer.resources import policy_from_row
    rows = {r["resource_type"]: r for r in await conn.fetch(
        "SELECT * FROM reservation_policies WHERE hospital_id = $1", hospital_id)}
    return {t: policy_from_row(rows.get(t), hospital_id, t) for t in ("outpatient", "exam", "bed")}


async def load_capacity(conn, hospital_id: str, horizon: Horizon, now: datetime,
                        movable: list[str]) -> Capacity:
    pols = await policies(conn, hospital_id)
    # Early opening: a slot of day D is bookable from D - clinic window on (policy.py).
    open_until = {t: min(horizon.end, calendar.at(pols[t].last_open_day(horizon.today) + timedelta(days=1), 0))
                  for t in ("outpatient", "exam")}
    outpatient = []
    for r in await repo.outpatient_capacity(conn, hospital_id, now, open_until["outpatient"], movable):
        if r["reserved_free"] + r["overflow_free"] <= 0:
            continue
        outpatient.append(engine.OutpatientSlot(
            slot_id=r["slot_id"], session_id=r["session_id"], department=r["department"],
            doctor_id=r["doctor_id"], title=engine.Title(r["title"]),
            day=horizon.index(calendar.local_date(r["start_at"])), start_minute=calendar.minute_of(r["start_at"]),
            length_minutes=r["length_minutes"], reserved_places=r["reserved_free"],
            overflow_places=r["overflow_free"]))
    exams = tuple(engine.ExamSlot(
        slot_id=r["slot_id"], modality=r["modality"], device_id=r["device_id"], room=r["room"],
        day=horizon.index(calendar.local_date(r["start_at"])), start_minute=calendar.minute_of(r["start_at"]),
        length_minutes=r["length_minutes"], pool=_POOL[r["pool"]])
        for r in await repo.exam_capacity(conn, hospital_id, now, open_until["exam"], movable))
    departments: dict[str, engine.Department] = {}
    rooms: dict[str, engine.Room] = {}
    beds = []
    last = horizon.date(horizon.days - 1)
    taken: dict[str, set[int]] = {}
    genders: dict[str, set[tuple[int, engine.Gender]]] = {}
    for n in await repo.bed_nights(conn, hospital_id, horizon.today, last, movable):
        idx = horizon.index(n["night"])
        taken.setdefault(n["bed_id"], set()).add(idx)
        if n["gender"]:
            genders.setdefault(n["room_id"], set()).add((idx, engine.Gender(n["gender"])))
    # Reserved bed-nights released to the general pool at their deadline are not offered.
    for n in await repo.released_bed_nights(conn, hospital_id, horizon.today, last):
        taken.setdefault(n["bed_id"], set()).add(horizon.index(n["night"]))
    for b in await repo.beds(conn, hospital_id):
        # A room's department is what an admission's department is matched against; its
        # ward keys the engine's limits (age, specialisms), so two wards of one
        # department keep their own.
        ward_id = b["ward_id"]
        if ward_id not in departments:
            departments[ward_id] = engine.Department(
                ward_id, min_age=b["min_age"], max_age=b["max_age"],
                specialisms=tuple((s, i + 1) for i, s in enumerate(b["specialisms"])))
        if b["room_id"] not in rooms:
            rooms[b["room_id"]] = engine.Room(
                b["room_id"], b["department"], b["capacity"], _POLICY[b["gender_policy"]],
                frozenset(b["equipment"]), tuple(sorted(genders.get(b["room_id"], ()))), ward_id=ward_id)
        first = first_bookable_night(BedStatus(b["status"]), b["expected_discharge"], horizon.today)
        if first is None:
            continue
        nights = frozenset(i for i in range(horizon.index(first), horizon.days)
                           if i not in taken.get(b["bed_id"], ()))
        if nights:
            beds.append(engine.Bed(b["bed_id"], b["room_id"], _POOL[b["pool"]], nights))
    channels = await repo.exam_channel_rules(conn, hospital_id)
    rules = exam_rules.modality_rules([(c["modality"], c["contrast_agent"], list(c["required_results"]),
                                        list(c["contraindications"])) for c in channels])
    next_slot = await repo.next_slot_start(conn, hospital_id, now)
    # A hospital with no slot ahead (beds only, or none published yet) is taken as open today.
    first_open_day = horizon.index(calendar.local_date(next_slot)) if next_slot is not None else 0
    return Capacity(tuple(outpatient), exams, tuple(departments.values()), tuple(rooms.values()), tuple(beds),
                    await repo.preparation_days(conn, hospital_id), rules, pols, max(0, first_open_day))


def problem(horizon: Horizon, capacity: Capacity, demands: list[Demand],
            existing: tuple[engine.ExistingBooking, ...] = (),
            quotas: dict[str, int] | None = None) -> engine.Problem:
    return engine.Problem(
        horizon_days=horizon.days, referrals=tuple(d.referral for d in demands),
        outpatient_slots=capacity.outpatient, exam_slots=capacity.exams, departments=capacity.departments,
        rooms=capacity.rooms, beds=capacity.beds, existing=existing,
        quotas=tuple(engine.ClinicQuota(c, p) for c, p in sorted((quotas or {}).items())),
        first_open_day=capacity.first_open_day)


async def reason_text(conn, hospital_id: str, why: engine.UnplacedReferral, horizon: Horizon) -> str:
    """The engine's reason as the clinic reads it: in Chinese, the deadline named by its
    date, the department by the name the hospital publishes for it, the modality by its
    Chinese name."""
    if why.reason == engine.ReasonCode.NO_CONSULTATION_SLOT_BEFORE_DEADLINE:
        why = replace(why, what=await repo.department_name(conn, hospital_id, why.what) or why.what)
    elif why.reason == engine.ReasonCode.NO_EXAM_SLOT_BEFORE_DEADLINE:
        why = replace(why, what=exam_rules.modality_text(why.what))
    return why.text("zh", day=lambda d: calendar.zh_date(horizon.date(d)))


def solve(prob: engine.Problem, time_limit: float, workers: int) -> engine.Solution:
    return engine.solve(prob, engine.SolverParams(time_limit_seconds=time_limit, num_workers=workers))


async def existing_of(conn, booking_id: str, referral_id: str, horizon: Horizon) -> list[engine.ExistingBooking]:
    """A tentative booking's items as the engine's anchors."""
    out = []
    for it in await repo.items(conn, booking_id):
        if it["kind"] == "ADMISSION":
            out.append(engine.ExistingBooking(referral_id, "admission", it["bed_id"], engine.BookingState.TENTATIVE,
                                              start_night=horizon.index(it["first_night"]), nights=it["nights"]))
        else:
            out.append(engine.ExistingBooking(referral_id, it["engine_item_id"], it["slot_id"],
                                              engine.BookingState.TENTATIVE))
    return out
