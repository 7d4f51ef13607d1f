"""Capacity bookkeeping and the placement of one referral against it.

Shared by the greedy baseline (which places referrals one after another) and by the
explanation of unplaced referrals (which asks whether a referral fits on its own).
"""

from __future__ import annotations

from .model import GenderPolicy, ItemKind, Referral
from .options import BaseUsage, Catalog, ItemOptions, Option, ReferralOptions


class Usage:
    """Mutable running totals of consumed capacity (internal to one solve)."""

    def __init__(self, cat: Catalog, base: BaseUsage) -> None:
        self.cat = cat
        self.nongreen = dict(base.outpatient_nongreen)
        self.green = dict(base.outpatient_green)
        self.exam_taken = set(base.exam_taken)
        self.bed_nights = set(base.bed_nights_taken)
        self.room_genders = {k: set(v) for k, v in base.room_genders.items()}

    def fits(self, referral: Referral, kind: ItemKind, o: Option) -> bool:
        if kind == ItemKind.CONSULTATION:
            s = self.cat.outpatient[o.resource_id]
            ng = self.nongreen.get(o.resource_id, 0)
            total = ng + self.green.get(o.resource_id, 0)
            if total >= s.reserved_places + s.overflow_places:
                return False
            return referral.green_channel or ng < s.reserved_places
        if kind == ItemKind.EXAM:
            return o.resource_id not in self.exam_taken
        if any((o.resource_id, n) in self.bed_nights for n in o.nights):
            return False
        room = self.cat.rooms[o.room_id] if o.room_id else None
        if room is not None and room.gender_policy == GenderPolicy.SAME_PER_NIGHT:
            return not any(
                self.room_genders.get((room.room_id, n), set()) - {referral.patient_gender} for n in o.nights
            )
        return True

    def take(self, referral: Referral, kind: ItemKind, o: Option) -> None:
        if kind == ItemKind.CONSULTATION:
            target = self.green if referral.green_channel else self.nongreen
            target[o.resource_id] = target.get(o.resource_id, 0) + 1
        elif kind == ItemKind.EXAM:
            self.exam_taken.add(o.resource_id)
        else:
            for n in o.nights:
                self.bed_nights.add((o.resource_id, n))
                if referral.patient_gender is not None and o.room_id:
                    self.room_genders.setdefault((o.room_id, n), set()).add(referral.patient_gender)

    def take_all(self, ro: ReferralOptions, picks: dict[str, Option]) -> None:
        for item in ro.items:
            self.take(ro.referral, item.kind, picks[item.item_id])


def _apart(o: Option, busy: list[Option], gap: int) -> bool:
    return all(o.abs_end + gap <= b.abs_start or b.abs_end + gap <= o.abs_start for b in busy)


def related_consultations(exam: ItemOptions, consults: list[ItemOptions]) -> list[ItemOptions]:
    """The consultations an exam is ordered against (its ``read_by``, else all)."""
    return [c for c in consults if not exam.read_by or c.item_id in exam.read_by]


def place_referral(ro: ReferralOptions, usage: Usage, gap: int) -> dict[str, Option] | None:
    """Earliest placement of every item (first come, first served), or None.

    Tries the first consultation's slots in time order; for each, books every further
    consultation at its earliest free slot apart from the items already chosen, every
    exam at its earliest free slot that keeps the order and the minimum gap, then the
    earliest bed from the last consultation's day on. Does not change ``usage``.
    """
    r = ro.referral
    consults = [i for i in ro.items if i.kind == ItemKind.CONSULTATION]
    exams = [i for i in ro.items if i.kind == ItemKind.EXAM]
    admission = next((i for i in ro.items if i.kind == ItemKind.ADMISSION), None)
    if any(not i.options for i in ro.items):
        return None
    first = consults[0] if consults else None
    consult_choices: list[Option | None] = (
        [o for o in first.options if usage.fits(r, first.kind, o)] if first else [None]
    )
    for c in consult_choices:
        picks: dict[str, Option] = {}
        busy: list[Option] = []
        if c is not None and first is not None:
            picks[first.item_id] = c
            busy.append(c)
        if not _place_more_consultations(r, consults[1:], usage, gap, picks, busy):
            continue
        if not _place_exams(r, exams, consults, usage, gap, picks, busy):
            continue
        if admission is not None:
            last = max((picks[i.item_id].day for i in consults), default=None)
            bed = next(
                (o for o in admission.options if (last is None or o.day >= last) and usage.fits(r, admission.kind, o)),
                None,
            )
            if bed is None:
                continue
            picks[admission.item_id] = bed
        return picks
    return None


def _place_more_consultations(r: Referral, consults: list[ItemOptions], usage: Usage, gap: int, picks: dict[str, Option], busy: list[Option]) -> bool:
    for item in consults:
        pick = next((o for o in item.options if _apart(o, busy, gap) and usage.fits(r, item.kind, o)), None)
        if not commit(picks, busy, item.item_id, pick):
            return False
    return True


def _place_exams(r: Referral, exams: list[ItemOptions], consults: list[ItemOptions], usage: Usage, gap: int, picks: dict[str, Option], busy: list[Option]) -> bool:
    for e in exams:
        related = [picks[c.item_id] for c in related_consultations(e, consults)]
        before = min((c.abs_start for c in related), default=None)
        after = max((c.abs_end for c in related), default=None)
        pick = None
        for o in e.options:
            verdict = order_verdict(e.before_consultation, o, before, after, gap) if related else None
            if verdict == "stop":
                break
            if verdict is None and _apart(o, busy, gap) and usage.fits(r, e.kind, o):
                pick = o
                break
        if not commit(picks, busy, e.item_id, pick):
            return False
    return True


def order_verdict(before_consultation: bool, o: Option, before: int, after: int, gap: int) -> str | None:
    """Whether an exam option keeps its order to the consultations: None (it does),
    "skip" (not this one) or "stop" (options are in start order: no later one will)."""
    if before_consultation:
        if o.abs_start + gap > before:
            return "stop"
        return "skip" if o.abs_end + gap > before else None
    return "skip" if o.abs_start < after + gap else None


def commit(picks: dict[str, Option], busy: list[Option], item_id: str, pick: Option | None) -> bool:
    """Record an item's pick; False when there is none (the placement fails)."""
    if pick is None:
        return False
    picks[item_id] = pick
    busy.append(pick)
    return True
