"""Event handlers: referral and scheduling events in, notifications and clinic updates out.

Each runs inside the consumer's inbox transaction (services.common.consumer), so a
redelivered event finds its inbox row and sends nothing twice.
"""
from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from common.v1 import event_pb2, types_pb2
from referral.v1 import events_pb2 as ref_ev
from referral.v1 import types_pb2 as ref_types
from scheduling.v1 import events_pb2 as sch_ev
from services.common.consumer import Subscription
from services.common.logging import get_logger
from services.common.pii import PiiCipher, mask_mobile
from services.notify.adapters import repository as repo
from services.notify.domain.model import MOBILE_CONTEXT, Appointment, EventPlan, Place, Route
from services.notify.service_layer.notifications import NotifyConfig, record_plan

log = get_logger(__name__)

_KINDS = {sch_ev.ITEM_KIND_CONSULTATION: "consultation", sch_ev.ITEM_KIND_EXAM: "exam",
          sch_ev.ITEM_KIND_ADMISSION: "admission"}
_URGENT = (types_pb2.URGENCY_EMERGENCY, types_pb2.URGENCY_URGENT)


class RouteNotKnownYet(Exception):
    """A scheduling event overtook its referral's events; retried (nak with delay) until they land."""


def _dt(ts) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def _date(d: types_pb2.Date) -> datetime | None:
    if not d.year:
        return None
    return datetime(d.year, d.month, d.day, 1, 0, tzinfo=UTC)  # 09:00 in Asia/Shanghai: a day, not an instant


def route_of(snapshot: ref_types.ReferralSnapshot, hospital_id: str, *, cancelled: bool = False) -> Route:
    down = snapshot.direction == ref_types.DIRECTION_DOWN
    department = snapshot.department or next(
        (n.consultation.department for n in snapshot.needs if n.WhichOneof("kind") == "consultation"), "")
    return Route(referral_id=snapshot.referral_id, patient_id=snapshot.patient.patient_id,
                 hospital_id=snapshot.hospital_id or hospital_id,
                 clinic_id=snapshot.receiving_institution_id if down else snapshot.sending_institution_id,
                 department=department, urgent=snapshot.urgency in _URGENT or snapshot.green_channel,
                 cancelled=cancelled)


def appointment_of(item: sch_ev.BookedItem) -> Appointment:
    p = item.place
    return Appointment(item_id=item.item_id or item.need_id, kind=_KINDS.get(item.kind, "consultation"),
                       start=_dt(item.start_time),
                       place=Place(hospital=p.hospital_name, building=p.building, floor=p.floor, room=p.room),
                       department=item.department, modality=item.modality, preparation=item.preparation,
                       ward=item.ward, bed=item.bed)


class EventHandlers:
    def __init__(self, cfg: NotifyConfig, pii: PiiCipher, on_change=None) -> None:
        self.cfg = cfg
        self.pii = pii
        self.planner = cfg.planner
        self._on_change = on_change or (lambda: None)

    def subscriptions(self, durable_prefix: str = "notify") -> list[Subscription]:
        # Every handler here only writes rows (messages are sent later by the dispatcher).
        referral = Subscription(f"{durable_prefix}-referral", "REFERRAL", ["referral.v1.>"], shared_transaction=True)
        referral.on(ref_ev.ReferralSubmitted, self.on_submitted)
        for message_type, status in ((ref_ev.ReferralAccepted, "ACCEPTED"), (ref_ev.ReferralReturned, "RETURNED"),
                                     (ref_ev.ReferralRejected, "REJECTED"), (ref_ev.ReferralCancelled, "CANCELLED")):
            referral.on(message_type, self._status_handler(status))
        referral.on(ref_ev.PatientArrived, self._clinic_only("ARRIVED", "患者已到诊"))
        referral.on(ref_ev.PatientNoShow, self._clinic_only("NO_SHOW", "患者爽约"))
        referral.on(ref_ev.ReferralCompleted, self._clinic_only("COMPLETED", "诊疗已完成"))
        referral.on(ref_ev.DownReferralProposed, self.on_down_referral)
        scheduling = Subscription(f"{durable_prefix}-scheduling", "SCHEDULING", ["scheduling.v1.>"],
                                  shared_transaction=True)
        scheduling.on(sch_ev.ReferralScheduled, self.on_scheduled)
        scheduling.on(sch_ev.BookingRescheduled, self.on_rescheduled)
        scheduling.on(sch_ev.BookingCancelled, self.on_booking_cancelled)
        scheduling.on(sch_ev.ReferralWaitlisted, self.on_waitlisted)
        scheduling.on(sch_ev.BedReady, self.on_bed_ready)
        return [referral, scheduling]

    # ------------------------------------------------------------- shared steps

    async def _learn(self, conn: asyncpg.Connection, env: event_pb2.EventEnvelope,
                     snapshot: ref_types.ReferralSnapshot, *, cancelled: bool = False) -> Route:
        """Keep the referral's route and the patient's contact as the referral service states them."""
        route = route_of(snapshot, env.hospital_id, cancelled=cancelled)
        patient = snapshot.patient
        mobile_hash = masked = ""
        ciphertext = patient.mobile_ciphertext
        if ciphertext:
            try:
                mobile = self.pii.decrypt(ciphertext, context=MOBILE_CONTEXT)
                mobile_hash, masked = self.pii.lookup_hash(mobile), mask_mobile(mobile)
            except Exception:  # noqa: BLE001 - unreadable: keep no number rather than a useless one
                log.warning("mobile ciphertext not readable", referral_id=snapshot.referral_id)
                ciphertext = ""
        return await repo.learn(conn, route, snapshot.sending_institution_id, snapshot.receiving_institution_id,
                                mobile_ciphertext=ciphertext, mobile_hash=mobile_hash, mobile_masked=masked,
                                wechat_openid=patient.wechat_openid)

    async def _route(self, conn: asyncpg.Connection, referral_id: str) -> Route:
        row = await repo.get_route(conn, referral_id)
        if row is None:
            raise RouteNotKnownYet(f"no referral event seen yet for {referral_id}")
        return repo.route_from(row)

    async def _apply(self, conn, env: event_pb2.EventEnvelope, route: Route, plan: EventPlan) -> None:
        await record_plan(conn, self.cfg, event_id=env.event_id, event_type=env.event_type, route=route, plan=plan)
        self._on_change()

    # ------------------------------------------------------------- referral events

    async def on_submitted(self, conn, env, event: ref_ev.ReferralSubmitted) -> None:
        await self._learn(conn, env, event.referral)

    def _status_handler(self, status: str):
        async def handle(conn, env, event) -> None:
            route = await self._learn(conn, env, event.referral, cancelled=status == "CANCELLED")
            if status == "CANCELLED":
                await repo.drop_appointments(conn, referral_id=route.referral_id)
            plan = self.planner.referral_status(route, status, getattr(event, "reason", ""))
            if status == "ACCEPTED" and event.referral.direction == ref_types.DIRECTION_DOWN:
                # "accepted by the hospital, the appointment follows" is untrue when a clinic takes
                # a patient back: no booking follows, and the follow-up message already said where.
                plan.messages = []
            await self._apply(conn, env, route, plan)
        return handle

    def _clinic_only(self, kind: str, summary: str):
        async def handle(conn, env, event) -> None:
            route = await self._learn(conn, env, event.referral)
            await self._apply(conn, env, route, self.planner.clinic_only(kind, summary))
        return handle

    async def on_down_referral(self, conn, env, event: ref_ev.DownReferralProposed) -> None:
        route = await self._learn(conn, env, event.referral)
        plan = self.planner.down_referral(route, event.clinic_name, event.clinic_address,
                                          _date(event.first_follow_up_date))
        await self._apply(conn, env, route, plan)

    # ------------------------------------------------------------- scheduling events

    async def on_scheduled(self, conn, env, event: sch_ev.ReferralScheduled) -> None:
        route = await self._route(conn, event.referral_id)
        items = [appointment_of(i) for i in event.items]
        await repo.save_appointments(conn, event.booking_id, event.referral_id, items)
        await self._apply(conn, env, route, self.planner.scheduled(route, event.booking_id, items, event.bring,
                                                                   self.cfg.clock()))

    async def on_rescheduled(self, conn, env, event: sch_ev.BookingRescheduled) -> None:
        route = await self._route(conn, event.referral_id)
        # Compared with what the patient was told, not with the event's previous_items: an item
        # the patient never heard of is news whether scheduling moved it or not. The event
        # carries no "bring": the patient keeps the words they were given at booking.
        told = await repo.current_appointments(conn, event.booking_id)
        bring = await repo.bring_told(conn, event.referral_id, event.booking_id)
        items = [appointment_of(i) for i in event.items]
        await repo.save_appointments(conn, event.booking_id, event.referral_id, items)
        await self._apply(conn, env, route, self.planner.rescheduled(route, event.booking_id, items, told, bring,
                                                                     self.cfg.clock(), event.reason))

    async def on_booking_cancelled(self, conn, env, event: sch_ev.BookingCancelled) -> None:
        route = await self._route(conn, event.referral_id)
        told = await repo.current_appointments(conn, event.booking_id)
        await repo.drop_appointments(conn, booking_id=event.booking_id)
        await self._apply(conn, env, route, self.planner.booking_cancelled(route, event.booking_id, told,
                                                                           self.cfg.clock(), event.reason))

    async def on_waitlisted(self, conn, env, event: sch_ev.ReferralWaitlisted) -> None:
        route = await self._route(conn, event.referral_id)
        await self._apply(conn, env, route, self.planner.clinic_only(
            "WAITLISTED", f"候补中：{event.reason}" if event.reason else "候补中", event.reason))

    async def on_bed_ready(self, conn, env, event: sch_ev.BedReady) -> None:
        route = await self._route(conn, event.referral_id)
        p = event.place
        plan = self.planner.bed_ready(route, event.booking_id, p.hospital_name, event.ward or p.room, event.bed,
                                      _dt(event.admit_by_time), f"{p.building}{p.floor}")
        await self._apply(conn, env, route, plan)
