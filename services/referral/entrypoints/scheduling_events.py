"""The scheduling service's events move the referral's state (closed loop)."""
from __future__ import annotations

from datetime import timezone

from scheduling.v1 import events_pb2 as sched
from services.common.consumer import Subscription
from services.referral.domain.model import ScheduledItem
from services.referral.service_layer.services import ReferralService

DURABLE = "referral-scheduling"


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
                                   lambda r, a, now: r.schedule(a, now, event.booking_id, _items(event.items)))

    async def waitlisted(conn, env, event: sched.ReferralWaitlisted) -> None:
        await svc.apply_scheduling(conn, event.referral_id, event.hospital_id,
                                   lambda r, a, now: r.waitlist(a, now, event.reason or event.reason_code))

    async def rescheduled(conn, env, event: sched.BookingRescheduled) -> None:
        await svc.apply_scheduling(conn, event.referral_id, event.hospital_id,
                                   lambda r, a, now: r.schedule(a, now, event.booking_id, _items(event.items),
                                                                event.reason or "改约"))

    async def booking_cancelled(conn, env, event: sched.BookingCancelled) -> None:
        await svc.apply_scheduling(conn, event.referral_id, event.hospital_id,
                                   lambda r, a, now: r.booking_cancelled(a, now, event.booking_id,
                                                                         event.reason or "预约已取消"))

    return (Subscription(durable=DURABLE, stream="SCHEDULING", filter_subjects=[
        f"scheduling.v1.{name}.>" for name in ("ReferralScheduled", "ReferralWaitlisted", "BookingRescheduled",
                                                "BookingCancelled")])
            .on(sched.ReferralScheduled, scheduled).on(sched.ReferralWaitlisted, waitlisted)
            .on(sched.BookingRescheduled, rescheduled).on(sched.BookingCancelled, booking_cancelled))
