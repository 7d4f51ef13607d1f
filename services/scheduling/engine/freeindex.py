"""Free capacity indexed for the greedy baseline, so that it runs in near-linear time.

The greedy books each item at its earliest free place. Enumerating every candidate
option of every referral (``options.referral_options``) costs time proportional to the
hospital's whole capacity per referral, and under tight capacity most of those options
are already taken: quadratic in all. Here free places are kept per (department, day),
(modality, day) and night, in start order, and a place leaves its list as soon as it is
full; the search walks only the referral's own days and only places still free. It
books exactly what the option-based search (``placement.place_referral``) books: same
order of candidates (start, then resource id), same rules, same costs.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator

from .model import (
    AdmissionNeed,
    ConsultationNeed,
    ExamNeed,
    ItemKind,
    Pool,
    Problem,
    Referral,
    deadline_day,
    exams_to_book,
)
from .options import (
    MINUTES_PER_DAY,
    Catalog,
    Option,
    _anchor_item,
    _with_extra,
    bed_admits,
    bed_costs,
    consultation_costs,
    item_specs,
)
from .placement import Usage, _apart, commit, order_verdict


class FreeIndex:
    """Places with room left, in start order, pruned as they fill up (one greedy run)."""

    def __init__(self, problem: Problem, cat: Catalog, usage: Usage) -> None:
        self.problem = problem
        self.cat = cat
        self.usage = usage
        self.consult: dict[tuple[str, int], list] = {}
        for dept, slots in cat.outpatient_by_department.items():
            for s in slots:  # already in (day, start, id) order
                if self._consult_open(s):
                    self.consult.setdefault((dept, s.day), []).append(s)
        self.exam: dict[tuple[str, int], list] = {}
        for modality, slots in cat.exams_by_modality.items():
            for s in slots:
                if s.slot_id not in usage.exam_taken:
                    self.exam.setdefault((modality, s.day), []).append(s)
        self.beds_free: dict[int, list[str]] = {}
        for b in sorted(problem.beds, key=lambda b: b.bed_id):
            for n in range(problem.horizon_days):
                if (b.available_nights is None or n in b.available_nights) and (b.bed_id, n) not in usage.bed_nights:
                    self.beds_free.setdefault(n, []).append(b.bed_id)
        self._admits: dict[tuple, bool] = {}

    def _consult_open(self, s) -> bool:
        total = self.usage.nongreen.get(s.slot_id, 0) + self.usage.green.get(s.slot_id, 0)
        return total < s.reserved_places + s.overflow_places

    # ----------------------------------------------------------------- bookkeeping

    def take(self, referral: Referral, kind: ItemKind, o: Option) -> None:
        self.usage.take(referral, kind, o)
        if kind == ItemKind.CONSULTATION:
            s = self.cat.outpatient[o.resource_id]
            if not self._consult_open(s):
                _remove(self.consult.get((s.department, s.day)), s, lambda x: (x.start_minute, x.slot_id))
        elif kind == ItemKind.EXAM:
            s = self.cat.exams[o.resource_id]
            _remove(self.exam.get((s.modality, s.day)), s, lambda x: (x.start_minute, x.slot_id))
        else:
            for n in o.nights:
                _remove(self.beds_free.get(n), o.resource_id, lambda x: x)

    def take_all(self, referral: Referral, picks: dict[str, Option], kinds: dict[str, ItemKind]) -> None:
        for item_id, o in picks.items():
            self.take(referral, kinds[item_id], o)

    # ----------------------------------------------------------------- search

    def place(self, referral: Referral) -> dict[str, Option] | None:
        """Earliest placement of every item, as ``placement.place_referral`` would find it."""
        p = self.problem
        gap = p.config.min_gap_minutes
        specs = item_specs(referral)
        anchor = _anchor_item(referral, specs)
        consults = referral.all_consultations()
        exams = exams_to_book(referral)
        first_days = _days(p, referral, referral.accepted_day)
        if not consults:
            firsts: Iterable[Option | None] = [None]
        else:
            firsts = self._consult_candidates(referral, consults[0], first_days, anchor)
        for c in firsts:
            picks: dict[str, Option] = {}
            busy: list[Option] = []
            if c is not None:
                picks[consults[0].item_id] = c
                busy.append(c)
            if not self._more_consultations(referral, consults[1:], first_days, anchor, busy, picks):
                continue
            if not self._exams(referral, exams, consults, anchor, busy, picks, gap):
                continue
            if referral.admission is not None:
                last = max((picks[k.item_id].day for k in consults), default=None)
                bed = self._bed(referral, referral.admission, last, anchor)
                if bed is None:
                    continue
                picks[specs[-1][0]] = bed
            return picks
        return None

    def _consult_option(self, referral: Referral, need: ConsultationNeed, s, anchor: str | None) -> Option:
        opt = Option(s.slot_id, s.day, s.start_minute, s.length_minutes, Pool.RESERVED)
        return _with_extra(self.problem, referral, need.item_id, consultation_costs(self.problem, need, s), s.day, need.item_id == anchor, None, opt)

    def _consult_candidates(self, referral: Referral, need: ConsultationNeed, days: list[int], anchor: str | None) -> Iterator[Option]:
        for d in days:
            for s in self.consult.get((need.department, d), ()):
                o = Option(s.slot_id, s.day, s.start_minute, s.length_minutes, Pool.RESERVED)
                if self.usage.fits(referral, ItemKind.CONSULTATION, o):
                    yield self._consult_option(referral, need, s, anchor)

    def _more_consultations(self, referral: Referral, needs, days: list[int], anchor: str | None, busy: list[Option], picks: dict[str, Option]) -> bool:
        gap = self.problem.config.min_gap_minutes
        for need in needs:
            pick = next(
                (o for o in self._consult_candidates(referral, need, days, anchor) if _apart(o, busy, gap)), None
            )
            if not commit(picks, busy, need.item_id, pick):
                return False
        return True

    def _exams(self, referral: Referral, exams: tuple[ExamNeed, ...], consults, anchor: str | None, busy: list[Option], picks: dict[str, Option], gap: int) -> bool:
        w = self.problem.config.weights
        for e in exams:
            related = [picks[c.item_id] for c in consults if not e.read_by or c.item_id in e.read_by]
            before = min((c.abs_start for c in related), default=None)
            after = max((c.abs_end for c in related), default=None)
            pick = None
            for d in _days(self.problem, referral, referral.accepted_day + e.preparation_days):
                if related and e.before_consultation and d * MINUTES_PER_DAY + gap > before:
                    break
                for s in self.exam.get((e.modality, d), ()):
                    if s.pool == Pool.OVERFLOW and not referral.green_channel:
                        continue
                    o = Option(s.slot_id, s.day, s.start_minute, s.length_minutes, s.pool)
                    verdict = order_verdict(e.before_consultation, o, before, after, gap) if related else None
                    if verdict == "stop":
                        break
                    if verdict is None and _apart(o, busy, gap):
                        costs = [("overflow", w.overflow_use)] if s.pool == Pool.OVERFLOW else []
                        pick = _with_extra(self.problem, referral, e.item_id, costs, s.day, e.item_id == anchor, None, o)
                        break
                if pick is not None:
                    break
            if not commit(picks, busy, e.item_id, pick):
                return False
        return True

    def _bed(self, referral: Referral, need: AdmissionNeed, last_consult_day: int | None, anchor: str | None) -> Option | None:
        p = self.problem
        for start in _days(p, referral, referral.accepted_day):
            if last_consult_day is not None and start < last_consult_day:
                continue
            nights = tuple(range(start, start + need.nights))
            if nights[-1] >= p.horizon_days:
                continue
            for bed_id in self.beds_free.get(start, ()):
                bed = self.cat.beds[bed_id]
                if bed.pool == Pool.OVERFLOW and not referral.green_channel:
                    continue
                room = self.cat.rooms[bed.room_id]
                if not self._room_admits(referral, need, room):
                    continue
                if bed.available_nights is not None and not all(n in bed.available_nights for n in nights):
                    continue
                o = Option(bed.bed_id, start, 0, 0, bed.pool, nights, room.room_id)
                if not self.usage.fits(referral, ItemKind.ADMISSION, o):
                    continue
                costs = bed_costs(p, need, room, self.cat.unit_of(room), bed.pool)
                return _with_extra(p, referral, "admission", costs, start, anchor == "admission", None, o)
        return None

    def _room_admits(self, referral: Referral, need: AdmissionNeed, room) -> bool:
        key = (room.room_id, need, referral.patient_age, referral.patient_gender)
        hit = self._admits.get(key)
        if hit is None:
            hit = self._admits[key] = bed_admits(referral, need, room, self.cat.unit_of(room))
        return hit


def _days(problem: Problem, referral: Referral, earliest: int) -> list[int]:
    last = deadline_day(problem, referral)
    return [d for d in range(max(earliest, 0), last + 1) if d in referral.available_days]


def _remove(items: list | None, x, key) -> None:
    """Drop ``x`` from a list sorted by ``key`` (unique keys)."""
    if not items:
        return
    i = bisect_left(items, key(x), key=key)
    if i < len(items) and items[i] == x:
        del items[i]
