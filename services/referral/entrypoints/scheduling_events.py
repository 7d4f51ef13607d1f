"""The scheduling service's events move the referral's state (closed loop)."""
from __future__ import annotations

from datetime import datetime, timezone

from scheduling.v1 import events_pb2 as sched
from services.common.consumer import Subscription
from services.referral.domain.model import ScheduledItem
from services.referral.service_layer.services import ReferralService

DURABLE = "referral-scheduling"
# For a waitlisting that came without a text for people: clinics read waitlist_reason,
# and a machine code such as NO_CAPACITY means nothing to them.
WAITLIST_REASON = "暂无可预约的号源，已进入候补队列，有号源空出时将自动安排"


def _occurred_at(env) -> datetime:
    """What orders one referral's scheduling events (see Referral.schedule)."""
    return env.occur_time.ToDatetime(tzinfo=timezone.utc)


def _items(items) -> list[ScheduledItem]:
    out = []
    for item in items:
        place = " ".join(x for x in (item.place.hospital_name, item.place.building, item.place.floor,
                                     item.place.room) if x)
        out.append(ScheduledItem(
            need_id=item.need_id,
            start=item.start_time.ToDatetime(tzinfo=timezone.utc) if item.HasField("start_time") else None,
            end=item.end_time.ToDatetime(tzinfo=timezone.utc) if item.HasField("end_time") else None,
            place=place, department=item.department, modality=item.modality))
    return out


def subscription(svc: ReferralService) -> Subscription:
    async def scheduled(conn, env, event: sched.ReferralScheduled) -> None:
        await svc.apply_scheduling(conn, event.referral_id, event.hospital_id,
                                   lambda r, a, now: r.schedule(a, now, event.booking_id, _items(event.items),
                                                                _occurred_at(env)))

    async def waitlisted(conn, env, event: sched.ReferralWaitlisted) -> None:
        await svc.apply_scheduling(conn, event.referral_id, event.hospital_id,
                                   lambda r, a, now: r.waitlist(a, now, event.reason or WAITLIST_REASON,
                                                                _occurred_at(env)))

    async def rescheduled(conn, env, event: sched.BookingRescheduled) -> None:
        await svc.apply_scheduling(conn, event.referral_id, event.hospital_id,
                                   lambda r, a, now: r.schedule(a, now, event.booking_id, _items(event.items),
                                                                _occurred_at(env), event.reason or "改约"))

    async def booking_cancelled(conn, env, event: sched.BookingCancelled) -> None:
        await svc.apply_scheduling(conn, event.referral_id, event.hospital_id,
                                   lambda r, a, now: r.booking_cancelled(a, now, event.booking_id,
                                                                         event.reason or "预约已取消",
                                                                         _occurred_at(env)))

    return (Subscription(durable=DURABLE, stream="SCHEDULING", filter_subjects=[
        f"scheduling.v1.{name}.>" for name in ("ReferralScheduled", "ReferralWaitlisted", "BookingRescheduled",
                                                "BookingCancelled")])
            .on(sched.ReferralScheduled, scheduled).on(sched.ReferralWaitlisted, waitlisted)
            .on(sched.BookingRescheduled, rescheduled).on(sched.BookingCancelled, booking_cancelled))
