"""The bed board: the states a bed moves through and which nights it can be booked; and
which changes of a ward, room or bed a patient booked on it can take.

UpdateBedStatus may move a bed only along these edges; HELD is entered and left through
HoldBed / ReleaseBedHold (a hold names a booking) or by the admission itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import Enum


class BedStatus(str, Enum):
    FREE = "FREE"
    OCCUPIED = "OCCUPIED"
    CLEANING = "CLEANING"
    BLOCKED = "BLOCKED"
    HELD = "HELD"


_BY_STATUS_UPDATE: dict[BedStatus, frozenset[BedStatus]] = {
    BedStatus.FREE: frozenset({BedStatus.OCCUPIED, BedStatus.CLEANING, BedStatus.BLOCKED}),
    # Discharge: the bed is cleaned first, or declared free straight away.
    BedStatus.OCCUPIED: frozenset({BedStatus.CLEANING, BedStatus.FREE, BedStatus.BLOCKED}),
    BedStatus.CLEANING: frozenset({BedStatus.FREE, BedStatus.BLOCKED}),
    BedStatus.BLOCKED: frozenset({BedStatus.FREE, BedStatus.CLEANING}),
    # The held-for patient arrives; ending a hold otherwise is ReleaseBedHold.
    BedStatus.HELD: frozenset({BedStatus.OCCUPIED}),
}

STATUS_TEXT = {
    BedStatus.FREE: "空床", BedStatus.OCCUPIED: "在床", BedStatus.CLEANING: "清洁消毒中",
    BedStatus.BLOCKED: "停用", BedStatus.HELD: "已为转诊患者预留",
}


class IllegalTransition(Exception):
    pass


def transition(current: BedStatus, target: BedStatus) -> BedStatus:
    if target == current and target != BedStatus.HELD:
        return target  # repeating a status update is harmless (idempotent retries)
    if target not in _BY_STATUS_UPDATE[current]:
        raise IllegalTransition(
            f"床位状态不能从“{STATUS_TEXT[current]}”改为“{STATUS_TEXT[target]}”")
    return target


def can_hold(current: BedStatus) -> bool:
    return current == BedStatus.FREE


def first_bookable_night(status: BedStatus, expected_discharge: date | None, today: date) -> date | None:
    """The first night the board lets a referral have the bed (None: not until it changes).

    A bed being cleaned or blocked is not offered until someone says it is free; an
    occupied bed is offered from its expected discharge date (the discharged patient
    leaves in the morning). A held bed keeps its booked nights in the bed-night table.
    """
    if status in (BedStatus.FREE, BedStatus.HELD):
        return today
    if status == BedStatus.OCCUPIED and expected_discharge is not None:
        return max(today, expected_discharge)
    return None


@dataclass(frozen=True)
class BookedPatient:
    """What a live admission asked of its bed, as its referral says: which of a ward's,
    room's or bed's changes it can take (UpsertBeds refuses the others)."""
    gender: str | None = None  # "MALE" / "FEMALE", spelled as a room's gender policy
    age: int | None = None
    required_equipment: frozenset[str] = frozenset()
    green_channel: bool = False


def keeps_gender_policy(new: str, patient: BookedPatient) -> bool:
    """A room's new gender policy still fits a patient booked in it only if it makes the
    room single-sex for the patient's own sex. Any other change turns the patient away
    (the other sex only) or may put the other sex beside them: a mixed room, or one of a
    single sex per night, which holds only against the sexes the bookings record."""
    return new in ("MALE", "FEMALE") and patient.gender == new


def keeps_equipment(old: list[str], new: list[str], patient: BookedPatient) -> bool:
    """Only equipment the admission required was promised; what it merely preferred, or
    what was added, changes nothing for it."""
    return not (set(old) - set(new)) & patient.required_equipment


def keeps_pool(new: str, patient: BookedPatient) -> bool:
    """A bed going beyond the reservation (overflow) is the green channel's only; any
    referral may use a reserved one."""
    return new == "reserved" or patient.green_channel


# A patient of unknown age is outside any age limit, as the engine places them
# (engine.options.bed_admits): it would not have given them this bed under the new limit,
# so the bed board may not set that limit under their booking either.
def keeps_min_age(new: int | None, patient: BookedPatient) -> bool:
    return new is None or (patient.age is not None and patient.age >= new)


def keeps_max_age(new: int | None, patient: BookedPatient) -> bool:
    return new is None or (patient.age is not None and patient.age <= new)
