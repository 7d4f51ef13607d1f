"""Use case: an event's plan becomes notifications with their first delivery, the
cancellation of the waiting messages it makes untrue, and the clinic's update (outbox), all
in the consumer's inbox transaction.

A message that cannot carry an instruction whole on a channel planned for it (a vendor's
variable or WeChat field is too short) carries what fits and points to the instructions
message, which the same transaction plans: one for the messages of an event that go out on
the same day, whatever their number, so that a booking's items do not multiply it. An event
that supersedes some of a booking's waiting messages cancels its waiting instructions messages
too (one may carry a superseded item's instruction) and plans them again for the messages it
keeps that pointed to them, together with its own.
"""
from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

import asyncpg
from google.protobuf import timestamp_pb2

from notify.v1 import events_pb2
from services.common import outbox
from services.notify.adapters import repository as repo
from services.notify.domain.messages import Planner
from services.notify.domain.model import SHANGHAI, Channel, Contact, EventPlan, PlannedMessage, Route, SkipReason
from services.notify.domain.policy import QuietHours, choose_channels, waits_for_quiet_hours
from services.notify.domain.templates import INSTRUCTIONS, Catalogue, Rendered, Template, render, spread

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
    # The SMS vendor's limit on one variable (0: none).
    sms_param_limit: int = 0

    def vendor_for(self, channel: Channel) -> str:
        return "wechat" if channel is Channel.WECHAT else self.sms_vendor

    def value_limit(self, tpl: Template, channel: Channel) -> int:
        """The length one of `tpl`'s values may have on `channel` (0: any)."""
        return tpl.wechat_limit if channel is Channel.WECHAT else self.sms_param_limit


def derived_id(source: str, what: str) -> str:
    """A stable id for something caused by `source`, so a re-run produces the same id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"notify:{what}:{source}"))


def timestamp_of(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(moment.astimezone(UTC))
    return ts


@dataclass(frozen=True)
class Created:
    """What planning one message did."""
    scheduled: bool  # a delivery waits for it (not when the message existed already)
    due: datetime
    urgent: bool
    essential: bool
    # Its instructions that a channel planned for it cannot carry whole, worded for the
    # instructions message.
    cut: tuple[str, ...] = ()


def _cut_lines(tpl: Template, values: dict[str, str], rendered: Rendered,
               channels: Sequence[Channel]) -> tuple[str, ...]:
    # Any channel of the plan may be the one that sends it (a fallback).
    cut = ((rendered.sms_cut if Channel.SMS in channels else frozenset())
           | (rendered.wechat_cut if Channel.WECHAT in channels else frozenset()))
    return tuple(tpl.instruction_lines(values, cut))


def waiting(cfg: NotifyConfig, row: asyncpg.Record) -> tuple[PlannedMessage, Created]:
    """A message created by an earlier event and still waiting (a notifications row with its
    waiting delivery's `due_at`), as planning it would have made it: what it cuts, when it goes."""
    tpl = cfg.catalogue.get(row["template"])
    values = json.loads(row["params"])
    channels = [Channel(c) for c in row["channel_plan"]]
    message = PlannedMessage(tpl.key, values, part=row["part"], urgent=row["urgent"], not_before=row["due_at"],
                             expires_at=row["expires_at"], booking_id=row["booking_id"], reminder=row["reminder"],
                             essential=row["essential"])
    cut = _cut_lines(tpl, values, render(tpl, values, sms_param_limit=cfg.sms_param_limit), channels)
    return message, Created(False, row["due_at"], row["urgent"], row["essential"], cut)


def _channels_for(cfg: NotifyConfig, tpl: Template, contact: Contact,
                  essential: bool) -> tuple[list[Channel], SkipReason | None]:
    choice = choose_channels(contact, essential=essential, wechat_template=tpl.wechat.template_id)
    if isinstance(choice, SkipReason):
        return [], choice
    channels = [c for c in choice if c in cfg.available]
    return channels, None if channels else SkipReason.NO_CONTACT


async def create_notification(conn: asyncpg.Connection, cfg: NotifyConfig, *, event_id: str, route: Route,
                              message: PlannedMessage, contact: Contact, now: datetime) -> Created:
    tpl = cfg.catalogue.get(message.template)
    rendered = render(tpl, message.values, sms_param_limit=cfg.sms_param_limit)
    urgent = message.urgent or tpl.urgent
    essential = tpl.essential if message.essential is None else message.essential
    channels, skip = _channels_for(cfg, tpl, contact, essential)
    due = max(now, message.not_before or now)
    if skip is None and waits_for_quiet_hours(urgent, contact):
        due = cfg.quiet.next_allowed(due)
    if skip is None and message.expires_at is not None and due >= message.expires_at:
        skip = SkipReason.EXPIRED
    notification_id = await repo.insert_notification(
        conn, event_id=event_id, recipient=route.patient_id, template=tpl.key, part=message.part,
        version=tpl.version, route=route, booking_id=message.booking_id, essential=essential,
        urgent=urgent, reminder=message.reminder, params=message.values, text=rendered.text,
        channel_plan=channels, skip_reason=skip.value if skip else None, expires_at=message.expires_at,
        covers=message.covers)
    if notification_id is None or skip is not None:
        return Created(False, due, urgent, essential)
    await repo.insert_delivery(conn, notification_id, channels[0], cfg.vendor_for(channels[0]), due)
    return Created(True, due, urgent, essential, _cut_lines(tpl, message.values, rendered, channels))


def instructions_messages(cfg: NotifyConfig, route: Route, contact: Contact, day: date,
                          completed: Sequence[tuple[PlannedMessage, Created]]) -> list[PlannedMessage]:
    """The instructions messages that carry whole what `completed` (messages going out on `day`)
    had to cut: each instruction once, in pieces no channel planned for them cuts."""
    tpl = cfg.catalogue.get(INSTRUCTIONS)
    essential = any(created.essential for _, created in completed)
    channels, _ = _channels_for(cfg, tpl, contact, essential)
    size = min((limit for limit in (cfg.value_limit(tpl, c) for c in channels) if limit > 0), default=0)
    text = "；".join(dict.fromkeys(line for _, created in completed for line in created.cut))
    expiries = [message.expires_at for message, _ in completed]
    return [PlannedMessage(
        INSTRUCTIONS, {"referral_id": route.referral_id, **values}, part=f"{day.isoformat()}#{values['index']}",
        urgent=any(created.urgent for _, created in completed),
        not_before=min(created.due for _, created in completed),
        expires_at=None if None in expiries else max(expiries), booking_id=completed[0][0].booking_id,
        reminder=all(message.reminder for message, _ in completed), essential=essential,
        covers=tuple(sorted({message.part for message, _ in completed})))
        for values in spread(tpl, text, size)]


async def record_messages(conn: asyncpg.Connection, cfg: NotifyConfig, *, event_id: str, route: Route,
                          contact: Contact, messages: Sequence[PlannedMessage], now: datetime,
                          uncovered: Sequence[tuple[PlannedMessage, Created]] = ()) -> bool:
    """Creates `messages` and the instructions messages that complete them and `uncovered`
    (earlier messages still waiting whose instructions message was cancelled; see `waiting`):
    one per day for both. Returns whether the patient is being told (a message other than a
    reminder has a delivery)."""
    told = False
    cut_by_day: dict[date, list[tuple[PlannedMessage, Created]]] = defaultdict(list)
    for message, created in uncovered:
        if created.cut:
            cut_by_day[created.due.astimezone(SHANGHAI).date()].append((message, created))
    for message in messages:
        created = await create_notification(conn, cfg, event_id=event_id, route=route, message=message,
                                            contact=contact, now=now)
        told = told or (created.scheduled and not message.reminder)
        if created.cut:
            cut_by_day[created.due.astimezone(SHANGHAI).date()].append((message, created))
    for day, completed in cut_by_day.items():
        for message in instructions_messages(cfg, route, contact, day, completed):
            await create_notification(conn, cfg, event_id=event_id, route=route, message=message, contact=contact,
                                      now=now)
    return told


async def record_plan(conn: asyncpg.Connection, cfg: NotifyConfig, *, event_id: str, event_type: str,
                      route: Route, plan: EventPlan) -> None:
    now = cfg.clock()
    uncovered: list[tuple[PlannedMessage, Created]] = []
    if plan.cancel_pending_of_referral or plan.cancel_pending_of_booking:
        # The kept messages still point to the instructions message: theirs is planned again,
        # with the new messages', by this event (so once, as the event is applied once).
        uncovered = [waiting(cfg, row) for row in await repo.cancel_pending_messages(
            conn, route.referral_id,
            booking_id="" if plan.cancel_pending_of_referral else plan.cancel_pending_of_booking,
            keep_parts=sorted(plan.keep_pending_of_items), reason=f"superseded by {event_type.rsplit('.', 1)[-1]}",
            timezone=SHANGHAI.key)]
    contact = repo.contact_from(await repo.contact_row(conn, route.patient_id), route.patient_id)
    told = await record_messages(conn, cfg, event_id=event_id, route=route, contact=contact,
                                 messages=plan.messages, now=now, uncovered=uncovered)
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
