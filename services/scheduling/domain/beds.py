"""The bed board: the states a bed moves through and which nights it can be booked.

UpdateBedStatus may move a bed only along these edges; HELD is entered and left through
HoldBed / ReleaseBedHold (a hold names a booking) or by the admission itself.
"""
from __future__ import annotations

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
