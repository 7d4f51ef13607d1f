"""Consortium rules: disease catalogue, result recognition, billing continuity,
three-colour chronic care. Pure functions over plain data."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from services.referral.domain.model import Direction, Level, Need, PriorResult, Purpose


@dataclass(frozen=True)
class CatalogueEntry:
    code: str
    name: str
    level: Level


class Catalogue:
    """One version of a consortium's disease catalogue (病种目录)."""

    def __init__(self, version: int, entries: list[CatalogueEntry]) -> None:
        self.version = version
        self._entries = {e.code.upper(): e for e in entries}

    def find(self, code: str) -> CatalogueEntry | None:
        """The most specific entry covering a code: "E11.9" matches "E11.9", then "E11"."""
        code = code.strip().upper()
        while code:
            entry = self._entries.get(code)
            if entry is not None:
                return entry
            code = code[:-1].rstrip(".") if "." in code else ""
        return None

    def entries(self) -> list[CatalogueEntry]:
        return sorted(self._entries.values(), key=lambda e: e.code)

    def treated_at(self, code: str, level: Level) -> bool:
        entry = self.find(code)
        return entry is not None and level >= entry.level


EMPTY_CATALOGUE = Catalogue(0, [])


@dataclass(frozen=True)
class RuleVerdict:
    allowed: bool
    reasons: tuple[str, ...]
    justification_required: bool
    catalogue_entry: CatalogueEntry | None
    down_referral_recommended: bool


def check_direction(direction: Direction, sender_level: Level, receiver_level: Level) -> str:
    if direction is Direction.UP and receiver_level <= sender_level:
        return "上转的接收机构级别应高于转出机构"
    if direction is Direction.DOWN and receiver_level >= sender_level:
        return "下转的接收机构级别应低于转出机构"
    return ""


def evaluate(catalogue: Catalogue, code: str, direction: Direction, sender_level: Level,
             receiver_level: Level, justification: str = "") -> RuleVerdict:
    reasons: list[str] = []
    problem = check_direction(direction, sender_level, receiver_level)
    if problem:
        reasons.append(problem)
    entry = catalogue.find(code)
    treated_by_sender = entry is not None and sender_level >= entry.level
    needs_justification = direction is Direction.UP and treated_by_sender
    if needs_justification and not justification.strip():
        reasons.append(f"「{entry.name}」属于本级机构诊治病种，上转须说明理由")  # type: ignore[union-attr]
    # Treated upstairs for something a lower level treats: a candidate for going back down.
    recommended = direction is Direction.UP and entry is not None and entry.level < receiver_level
    return RuleVerdict(not reasons, tuple(reasons), needs_justification, entry, recommended)


# --- mutual recognition of results (检查检验结果互认) ---------------------------------------


def result_is_valid(result: PriorResult, validity_days: dict[str, int], today: date) -> bool:
    days = validity_days.get(result.exam_type.upper())
    if days is None or result.result_date > today:
        return False
    return result.result_date + timedelta(days=days) >= today


def recognise_results(needs: list[Need], results: list[PriorResult], validity_days: dict[str, int],
                      today: date) -> None:
    """Marks each result's validity and each exam need a valid result covers."""
    for result in results:
        result.valid = result_is_valid(result, validity_days, today)
    for need in needs:
        need.covered_by_prior_result, need.covering_result_reference = False, ""
        if need.kind != "exam":
            continue
        for result in results:
            same_body_part = not need.body_part or not result.body_part or \
                need.body_part.lower() == result.body_part.lower()
            if result.valid and result.exam_type.upper() == need.modality.upper() and same_body_part:
                need.covered_by_prior_result = True
                need.covering_result_reference = result.reference
                break


# --- billing continuity -------------------------------------------------------------------


@dataclass(frozen=True)
class BillingTerms:
    deductible_carried: bool
    deductible_waived: bool


def billing_terms(direction: Direction, purpose: Purpose, needs: list[Need]) -> BillingTerms:
    inpatient = any(n.kind == "admission" for n in needs)
    return BillingTerms(
        deductible_carried=direction is Direction.UP and inpatient,
        deductible_waived=direction is Direction.DOWN and purpose is Purpose.REHABILITATION)


# A patient's referrals of one ICD-10 category are one episode (the deductible paid counts
# on the next one) while no 180 days pass without a referral of it.
EPISODE_WINDOW = timedelta(days=180)


def episode_continues(last_activity_at: datetime, now: datetime) -> bool:
    return last_activity_at >= now - EPISODE_WINDOW


# --- three-colour chronic care (三色标管理) -------------------------------------------------


class Colour(enum.IntEnum):
    GREEN = 1
    YELLOW = 2
    RED = 3


LEVEL_OF_COLOUR = {Colour.GREEN: Level.VILLAGE, Colour.YELLOW: Level.TOWNSHIP, Colour.RED: Level.HOSPITAL}


def proposed_move(previous: Colour | None, colour: Colour, managing_level: Level) -> Direction | None:
    """Which way a colour change moves the patient, if the managing level no longer fits."""
    if previous == colour:
        return None
    target = LEVEL_OF_COLOUR[colour]
    if target > managing_level:
        return Direction.UP
    if target < managing_level:
        return Direction.DOWN
    return None
