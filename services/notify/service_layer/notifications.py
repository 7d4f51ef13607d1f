"""Use case: an event's plan becomes notifications with their first delivery, the
cancellation of the waiting messages it makes untrue, and the clinic's update (outbox), all
in the consumer's inbox transaction."""
from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from google.protobuf import timestamp_pb2

from notify.v1 import events_pb2
from services.common import outbox
from services.notify.adapters import repository as repo
from services.notify.domain.messages import Planner
from services.notify.domain.model import Channel, Contact, EventPlan, PlannedMessage, Route, SkipReason
from services.notify.domain.policy import QuietHours, choose_channels, waits_for_quiet_hours
from services.notify.domain.templates import Catalogue, render

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class NotifyConfig:
    catalogue: Catalogue
    planner: Planner
    quiet: QuietHours
    sms_vendor: str  # aliyun | tencent
    clock: Clock = system_clock
    # Channels with a configured client; the others are never chosen.
    available: frozenset[Channel] = frozenset({Channel.WECHAT, Channel.SMS})

    def vendor_for(self, channel: Channel) -> str:
        return "wechat" if channel is Channel.WECHAT else self.sms_vendor


def derived_id(source: str, what: str) -> str:
    """A stable id for something caused by `source`, so a re-run produces the same id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"notify:{what}:{source}"))


def timestamp_of(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(moment.astimezone(UTC))
    return ts


async def create_notification(conn: asyncpg.Connection, cfg: NotifyConfig, *, event_id: str, route: Route,
                              message: PlannedMessage, contact: Contact, now: datetime) -> tuple[uuid.UUID | None, bool]:
    """(notification id or None if it existed, whether a delivery was scheduled)."""
    tpl = cfg.catalogue.get(message.template)
    rendered = render(tpl, message.values)
    urgent = message.urgent or tpl.urgent
    choice = choose_channels(contact, essential=tpl.essential, wechat_template=tpl.wechat.template_id)
    channels = [] if isinstance(choice, SkipReason) else [c for c in choice if c in cfg.available]
    skip: SkipReason | None = choice if isinstance(choice, SkipReason) else None
    if skip is None and not channels:
        skip = SkipReason.NO_CONTACT
    due = max(now, message.not_before or now)
    if skip is None and waits_for_quiet_hours(urgent, contact):
        due = cfg.quiet.next_allowed(due)
    if skip is None and message.expires_at is not None and due >= message.expires_at:
        skip = SkipReason.EXPIRED
    notification_id = await repo.insert_notification(
        conn, event_id=event_id, recipient=route.patient_id, template=tpl.key, part=message.part,
        version=tpl.version, route=route, booking_id=message.booking_id, essential=tpl.essential,
        urgent=urgent, reminder=message.reminder, params=message.values, text=rendered.text,
        channel_plan=channels, skip_reason=skip.value if skip else None, expires_at=message.expires_at)
    if notification_id is None or skip is not None:
        return notification_id, False
    await repo.insert_delivery(conn, notification_id, channels[0], cfg.vendor_for(channels[0]), due)
    return notification_id, True


async def record_plan(conn: asyncpg.Connection, cfg: NotifyConfig, *, event_id: str, event_type: str,
                      route: Route, plan: EventPlan) -> None:
    now = cfg.clock()
    if plan.cancel_pending_of_referral or plan.cancel_pending_of_booking:
        await repo.cancel_pending_messages(
            conn, route.referral_id,
            booking_id="" if plan.cancel_pending_of_referral else plan.cancel_pending_of_booking,
            keep_parts=sorted(plan.keep_pending_of_items), reason=f"superseded by {event_type.rsplit('.', 1)[-1]}")
    contact = repo.contact_from(await repo.contact_row(conn, route.patient_id), route.patient_id)
    told = False
    for message in plan.messages:
        _, scheduled = await create_notification(conn, cfg, event_id=event_id, route=route, message=message,
                                                 contact=contact, now=now)
        told = told or (scheduled and not message.reminder)
    if plan.clinic is not None:
        update = plan.clinic
        event = events_pb2.ReferralUpdateForClinic(
            referral_id=route.referral_id, clinic_id=route.clinic_id, hospital_id=route.hospital_id,
            kind=events_pb2.ClinicUpdateKind.Value(f"CLINIC_UPDATE_KIND_{update.kind}"),
            source_event_id=event_id, source_event_type=event_type, summary=update.summary,
            appointment_time=timestamp_of(update.appointment_time), place=update.place, reason=update.reason,
            patient_notified=told)
        await outbox.add(conn, event, aggregate_id=route.referral_id, hospital_id=route.hospital_id,
                         event_id=derived_id(event_id, "clinic"))
