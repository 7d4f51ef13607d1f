"""The scheduling service's events arrive late, twice or out of order: none may undo a
newer one, and one that does not count is a no-op (the consumer acks it), not an error."""
import itertools
from datetime import datetime, timedelta, timezone

import pytest

from services.common.errors import FailedPrecondition, PermissionDenied
from services.referral.domain.model import Referral, ScheduledItem, State
from tests.unit.referral.test_domain import HOSPITAL, NOW, SCHEDULER, referral


def at(minute: int) -> datetime:
    """When the scheduler emitted an event (its envelope's occurred_at)."""
    return datetime(2026, 11, 23, 9, minute, tzinfo=timezone.utc)


def items(day: int) -> list[ScheduledItem]:
    start = datetime(2026, 12, day, 1, 0, tzinfo=timezone.utc)
    return [ScheduledItem("c1", start, start + timedelta(minutes=15), "门诊楼3诊室", "neurology")]


# Each event as the consumer applies it: (what it is, the step on the referral).
def scheduled(booking: str, minute: int, day: int = 1):
    return f"scheduled {booking}@{minute}", lambda r: r.schedule(SCHEDULER, NOW, booking, items(day), at(minute))


def rescheduled(booking: str, minute: int, day: int):
    return (f"rescheduled {booking}@{minute}",
            lambda r: r.schedule(SCHEDULER, NOW, booking, items(day), at(minute), "专家停诊"))


def cancelled(booking: str, minute: int):
    return (f"cancelled {booking}@{minute}",
            lambda r: r.booking_cancelled(SCHEDULER, NOW, booking, "设备故障", at(minute)))


def waitlisted(minute: int):
    return f"waitlisted@{minute}", lambda r: r.waitlist(SCHEDULER, NOW, "号源已满", at(minute))


def apply(r: Referral, *events) -> None:
    for _, step in events:
        assert step(r) == []


def outcome(r: Referral):
    return r.state, r.booking_id, r.scheduled_items


def test_a_late_cancellation_of_a_replaced_booking_changes_nothing():
    r = referral(State.ACCEPTED)
    apply(r, scheduled("B1", 1), scheduled("B2", 3))
    moves = len(r.history)
    apply(r, cancelled("B1", 2))
    assert outcome(r) == (State.SCHEDULED, "B2", items(1)) and len(r.history) == moves


def test_a_placement_arriving_after_its_cancellation_does_not_bring_the_booking_back():
    r = referral(State.ACCEPTED)
    apply(r, cancelled("B1", 2))  # before its placement: nothing to cancel yet, and no error
    assert outcome(r) == (State.ACCEPTED, "", []) and not r.history
    apply(r, scheduled("B1", 1))
    assert outcome(r) == (State.ACCEPTED, "", []) and not r.history
    apply(r, scheduled("B2", 3, day=5))
    assert outcome(r) == (State.SCHEDULED, "B2", items(5))


def test_an_older_move_of_the_booking_does_not_overwrite_a_newer_one():
    r = referral(State.ACCEPTED)
    apply(r, scheduled("B1", 1, day=1), rescheduled("B1", 3, day=3))
    apply(r, rescheduled("B1", 2, day=2))
    assert outcome(r) == (State.SCHEDULED, "B1", items(3))
    # Its placement after a move: the move is newer.
    r = referral(State.ACCEPTED)
    apply(r, rescheduled("B1", 2, day=2), scheduled("B1", 1, day=1))
    assert outcome(r) == (State.SCHEDULED, "B1", items(2))


def test_a_stale_waitlisting_does_not_take_the_booking_away():
    r = referral(State.ACCEPTED)
    apply(r, scheduled("B1", 2))  # promoted from the waitlist...
    apply(r, waitlisted(1))  # ...whose announcement comes late
    assert outcome(r) == (State.SCHEDULED, "B1", items(1))


def test_a_newer_waitlisting_ends_a_booking_whose_cancellation_is_still_on_its_way():
    r = referral(State.ACCEPTED)
    apply(r, scheduled("B1", 1), waitlisted(3))
    assert outcome(r) == (State.WAITLISTED, "", []) and r.waitlist_reason == "号源已满"
    apply(r, cancelled("B1", 2))
    assert outcome(r) == (State.WAITLISTED, "", [])


HISTORIES = [
    # Placed, moved, cancelled, waitlisted, placed again, moved again.
    [scheduled("B1", 1, 1), rescheduled("B1", 2, 2), cancelled("B1", 3), waitlisted(4), scheduled("B2", 5, 5),
     rescheduled("B2", 6, 6)],
    # Waitlisted, promoted, cancelled: back to accepted with no booking.
    [waitlisted(1), scheduled("B1", 2, 2), cancelled("B1", 3)],
    # A booking replaced by another before its own cancellation went out.
    [scheduled("B1", 1, 1), cancelled("B1", 2), scheduled("B2", 3, 3), rescheduled("B2", 4, 4)],
]


@pytest.mark.parametrize("history", HISTORIES, ids=lambda h: ", ".join(name for name, _ in h))
def test_any_arrival_order_ends_where_the_scheduler_did(history):
    expected = referral(State.ACCEPTED)
    apply(expected, *history)
    for order in itertools.permutations(history):
        r = referral(State.ACCEPTED)
        for _, step in order:
            try:
                step(r)
            except FailedPrecondition:
                pass  # as the consumer does: nothing to move in this state
        assert outcome(r) == outcome(expected), [name for name, _ in order]


def test_only_the_scheduler_sends_them_even_when_stale():
    r = referral(State.ACCEPTED)
    apply(r, scheduled("B1", 5))
    for step in (lambda: r.schedule(HOSPITAL, NOW, "B1", [], at(1)), lambda: r.waitlist(HOSPITAL, NOW, "x", at(1)),
                 lambda: r.booking_cancelled(HOSPITAL, NOW, "B0", "x", at(1))):
        with pytest.raises(PermissionDenied):
            step()
