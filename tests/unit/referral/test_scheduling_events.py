"""The scheduling consumer's handlers, without a database or a broker: what they hand
the aggregate from an event and its envelope."""
from datetime import datetime, timezone

from common.v1 import event_pb2
from scheduling.v1 import events_pb2 as sched
from services.referral.domain.model import State
from services.referral.entrypoints import scheduling_events
from tests.unit.referral.test_domain import NOW, SCHEDULER, referral


class FakeService:
    """Runs each handler's step on one in-memory referral, as apply_scheduling does."""

    def __init__(self, state: State) -> None:
        self.referral = referral(state)

    async def apply_scheduling(self, conn, referral_id, hospital_id, step) -> bool:
        step(self.referral, SCHEDULER, NOW)
        return True


def handler(svc: FakeService, event_type):
    subscription = scheduling_events.subscription(svc)  # type: ignore[arg-type]
    return subscription.handlers[event_type.DESCRIPTOR.full_name][1]


def envelope(minute: int) -> event_pb2.EventEnvelope:
    env = event_pb2.EventEnvelope(event_id=f"e{minute}")
    env.occur_time.FromDatetime(datetime(2026, 11, 23, 9, minute, tzinfo=timezone.utc))
    return env


COMMON = dict(referral_id="r1", hospital_id="H1", sending_institution_id="K1")


async def test_a_waitlisting_without_a_text_shows_a_sentence_not_the_machine_code():
    svc = FakeService(State.ACCEPTED)
    await handler(svc, sched.ReferralWaitlisted)(
        None, envelope(1), sched.ReferralWaitlisted(reason_code="NO_CAPACITY", reason="", **COMMON))
    assert svc.referral.state is State.WAITLISTED
    assert svc.referral.waitlist_reason == scheduling_events.WAITLIST_REASON
    assert "NO_CAPACITY" not in svc.referral.waitlist_reason


async def test_the_envelope_orders_a_booking_and_its_earlier_cancellation():
    svc = FakeService(State.ACCEPTED)
    await handler(svc, sched.BookingCancelled)(
        None, envelope(2), sched.BookingCancelled(booking_id="B1", reason="设备故障", **COMMON))
    await handler(svc, sched.ReferralScheduled)(None, envelope(1), sched.ReferralScheduled(booking_id="B1", **COMMON))
    assert (svc.referral.state, svc.referral.booking_id) == (State.ACCEPTED, "")
    await handler(svc, sched.ReferralScheduled)(None, envelope(3), sched.ReferralScheduled(booking_id="B2", **COMMON))
    assert (svc.referral.state, svc.referral.booking_id) == (State.SCHEDULED, "B2")
