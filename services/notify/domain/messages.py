"""What each referral or scheduling event means for the patient and for the clinic."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.notify.domain.model import (
    SHANGHAI,
    Appointment,
    ClinicUpdate,
    EventPlan,
    PlannedMessage,
    Route,
)
from services.notify.domain.templates import Catalogue

DEFAULT_BRING = "身份证、医保卡、既往检查结果"
NO_PREPARATION = "无需特殊准备"
# A change this close to the appointment cannot wait for the morning.
SOON = timedelta(hours=12)
# The templates the planner picks by name; an item's (ITEM_TEMPLATES) may be its kind's instead.
_STATUS_TEMPLATES = {"ACCEPTED": "referral_accepted", "RETURNED": "referral_returned",
                     "REJECTED": "referral_rejected", "CANCELLED": "referral_cancelled"}
DOWN_REFERRAL = "down_referral"
BOOKED = "appointment_booked"
CHANGED = "appointment_changed"
CANCELLED = "appointment_cancelled"
BED_READY = "bed_ready"
DAY_BEFORE = "reminder_day_before"
TWO_HOURS = "reminder_2h"
ITEM_TEMPLATES = (BOOKED, CHANGED, DAY_BEFORE, TWO_HOURS)
KINDS = ("consultation", "exam", "admission")  # Appointment.kind
# An item's template by its kind, where the kind has its own: the vendors cap one template's
# sends to a number a day, and a consultation with three exams would exceed it in one template.
_BY_KIND = {
    (BOOKED, "admission"): "admission_booked",
    (BOOKED, "exam"): "exam_booked",
    (CHANGED, "exam"): "exam_changed",
    (DAY_BEFORE, "admission"): "admission_reminder",
    (DAY_BEFORE, "exam"): "exam_reminder_day_before",
    (TWO_HOURS, "exam"): "exam_reminder_2h",
}


def for_item(template: str, appt: Appointment) -> str:
    return _for_kind(template, appt.kind)


def _for_kind(template: str, kind: str) -> str:
    return _BY_KIND.get((template, kind), template)


# Every template a plan can name: a catalogue without one of them would fail its events in
# the consumer (dead letters, patients never told), so the settings check refuses it at start.
TEMPLATES = frozenset({*_STATUS_TEMPLATES.values(), DOWN_REFERRAL, CANCELLED, BED_READY,
                       *(_for_kind(t, kind) for t in ITEM_TEMPLATES for kind in KINDS)})


@dataclass(frozen=True)
class ReminderRules:
    day_before_at: tuple[int, int] = (18, 0)  # local time on the previous day
    before: timedelta = timedelta(hours=2)


def day(moment: datetime) -> str:
    local = moment.astimezone(SHANGHAI)
    return f"{local.year}年{local.month}月{local.day}日"


def short_day(moment: datetime) -> str:
    local = moment.astimezone(SHANGHAI)
    return f"{local.month}月{local.day}日"


def clock_time(moment: datetime) -> str:
    return moment.astimezone(SHANGHAI).strftime("%H:%M")


def where(appt: Appointment) -> str:
    return f"{appt.place.building}{appt.place.floor}"


def moved(before: Appointment | None, after: Appointment) -> bool:
    """Whether the patient must hear of an item again: new to them, or its time or place changed."""
    return before is None or (before.start, before.place, before.ward) != (after.start, after.place, after.ward)


class Planner:
    def __init__(self, catalogue: Catalogue, reminders: ReminderRules | None = None) -> None:
        self.catalogue = catalogue
        self.rules = reminders or ReminderRules()

    # ------------------------------------------------------------- values

    def _base(self, route: Route) -> dict[str, str]:
        return {"referral_id": route.referral_id, "dept": self.catalogue.department(route.department)}

    def _room(self, appt: Appointment) -> str:
        if appt.place.room:
            return appt.place.room
        if appt.kind == "admission":
            return appt.ward or "病区"
        if appt.kind == "consultation":
            return self.catalogue.department(appt.department)
        return self.catalogue.modality(appt.modality)

    def appointment_values(self, route: Route, appt: Appointment, bring: str) -> dict[str, str]:
        room = self._room(appt)
        return {**self._base(route), "date": short_day(appt.start), "time": clock_time(appt.start),
                "when": f"{day(appt.start)} {clock_time(appt.start)}", "day": day(appt.start),
                "hospital": appt.place.hospital or "医院", "place": where(appt) or "门诊大厅",
                "room": room, "ward": appt.ward or appt.place.room or "病区",
                "bring": bring or DEFAULT_BRING, "prep": appt.preparation or NO_PREPARATION}

    def _urgent(self, route: Route, start: datetime | None, now: datetime) -> bool:
        return route.urgent or (start is not None and start - now < SOON)

    # ------------------------------------------------------------- referral events

    def referral_status(self, route: Route, status: str, reason: str = "") -> EventPlan:
        """ACCEPTED, RETURNED, REJECTED or CANCELLED."""
        template = _STATUS_TEMPLATES[status]
        words = {"ACCEPTED": "已接收", "RETURNED": "已退回，需补充材料", "REJECTED": "未被接收",
                 "CANCELLED": "已取消"}[status]
        return EventPlan(messages=[PlannedMessage(template, self._base(route), urgent=route.urgent)],
                         clinic=ClinicUpdate(status, f"转诊{words}", reason=reason),
                         cancel_pending_of_referral=status == "CANCELLED")

    def down_referral(self, route: Route, clinic_name: str, clinic_address: str,
                      follow_up: datetime | None) -> EventPlan:
        values = {**self._base(route), "clinic": clinic_name or "签约基层医疗机构",
                  "address": clinic_address or "请咨询签约医生",
                  "followup": short_day(follow_up) if follow_up else "待签约医生通知"}
        message = PlannedMessage(DOWN_REFERRAL, values)
        summary = f"下转至{values['clinic']}，首次随访{values['followup']}"
        return EventPlan(messages=[message], clinic=ClinicUpdate(
            "DOWN_REFERRAL", summary, appointment_time=follow_up, place=values["address"]))

    # ------------------------------------------------------------- scheduling events

    @staticmethod
    def _booking_news(route: Route, messages: list[PlannedMessage]) -> list[PlannedMessage]:
        """What a scheduling event may tell the patient: nothing once the referral was cancelled,
        whose own message said its appointments went with it. (Notify reads the referral and
        the scheduling streams apart: a booking's events can reach it after that message.)"""
        return [] if route.cancelled else messages

    def _appointment_messages(self, template: str, route: Route, booking_id: str,
                              items: Sequence[Appointment], bring: str, now: datetime) -> list[PlannedMessage]:
        out = []
        for appt in sorted(items, key=lambda a: a.start):
            out.append(PlannedMessage(for_item(template, appt), self.appointment_values(route, appt, bring),
                                      part=appt.item_id, urgent=self._urgent(route, appt.start, now),
                                      booking_id=booking_id))
            out.extend(self.reminders(route, booking_id, appt, bring, now))
        return self._booking_news(route, out)

    def reminders(self, route: Route, booking_id: str, appt: Appointment, bring: str,
                  now: datetime) -> list[PlannedMessage]:
        """The reminders of an item announced (booked or changed) at `now`, the event's time."""
        values = self.appointment_values(route, appt, bring)
        local = appt.start.astimezone(SHANGHAI)
        h, m = self.rules.day_before_at
        day_before = (local - timedelta(days=1)).replace(hour=h, minute=m, second=0, microsecond=0)
        # "Tomorrow" is wrong once the day has come: the day-before reminder expires at midnight.
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        due = []
        # The patient told of an item today needs no "tomorrow" about it this evening, and the
        # day's SMS must stay under the per-number daily cap (a consultation and three exams
        # would otherwise send eight or more), past which an evening reminder is held to the
        # next day and expires. Judged by the planning time: the planner cannot know the
        # quiet hours or caps that may hold the announcement over. An admission keeps its
        # reminder: the booking message gives only the day, the reminder the time and what
        # to prepare, and it has no 2-hour reminder.
        if appt.kind == "admission" or now.astimezone(SHANGHAI).date() != day_before.date():
            due.append((DAY_BEFORE, day_before, min(midnight, appt.start)))
        if appt.kind != "admission":
            # An admission is a day to come in, not a visit: reminded the evening before only.
            due.append((TWO_HOURS, appt.start - self.rules.before, appt.start))
        return [PlannedMessage(for_item(t, appt), values, part=appt.item_id, not_before=at, expires_at=expires,
                               booking_id=booking_id, reminder=True)
                for t, at, expires in due if now < at < expires]

    def scheduled(self, route: Route, booking_id: str, items: Sequence[Appointment], bring: str,
                  now: datetime) -> EventPlan:
        first = min(items, key=lambda a: a.start) if items else None
        summary = f"已预约{len(items)}项"
        if first:
            summary += f"，首项{day(first.start)} {clock_time(first.start)} {first.place.hospital}{where(first)}"
        return EventPlan(
            messages=self._appointment_messages(BOOKED, route, booking_id, items, bring, now),
            clinic=ClinicUpdate("SCHEDULED", summary, appointment_time=first.start if first else None,
                                place=self._place_words(first)))

    def rescheduled(self, route: Route, booking_id: str, items: Sequence[Appointment],
                    told: Sequence[Appointment], bring: str, now: datetime, reason: str) -> EventPlan:
        """`told`: the booking's items as the patient last heard of them; `bring`: what they were
        told to bring. Only the items that moved are announced again; what the patient was told
        of the others (their booking message, their reminders) stays true and stays planned."""
        before = {a.item_id: a for a in told}
        changed = [a for a in items if moved(before.get(a.item_id), a)]
        first = min(items, key=lambda a: a.start) if items else None
        summary = "预约已改约"
        if first:
            summary += f"至{day(first.start)} {clock_time(first.start)}"
        return EventPlan(
            messages=self._appointment_messages(CHANGED, route, booking_id, changed, bring, now),
            clinic=ClinicUpdate("RESCHEDULED", summary, appointment_time=first.start if first else None,
                                place=self._place_words(first), reason=reason),
            cancel_pending_of_booking=booking_id,
            keep_pending_of_items=frozenset(a.item_id for a in items) - {a.item_id for a in changed})

    def booking_cancelled(self, route: Route, booking_id: str, told: Sequence[Appointment],
                          now: datetime, reason: str) -> EventPlan:
        """`told`: the booking's items as the patient last heard of them."""
        plan = EventPlan(clinic=ClinicUpdate("BOOKING_CANCELLED", "预约已取消", reason=reason),
                         cancel_pending_of_booking=booking_id)
        # Without the items notify has nothing true to say: it never told the patient of this
        # booking (nothing was booked, or the booking's event never reached it) or has told them
        # of its cancellation already. The clinic's update then says the patient was not told.
        if not told:
            return plan
        first = min(told, key=lambda a: a.start)
        plan.messages = self._booking_news(route, [PlannedMessage(
            CANCELLED, self.appointment_values(route, first, ""), part=booking_id,
            urgent=self._urgent(route, first.start, now), booking_id=booking_id)])
        return plan

    def bed_ready(self, route: Route, booking_id: str, hospital: str, ward: str, bed: str,
                  admit_by: datetime, place: str) -> EventPlan:
        values = {**self._base(route), "hospital": hospital or "医院", "ward": ward or "病区", "bed": bed or "",
                  "admit_by": f"{short_day(admit_by)}{clock_time(admit_by)}",
                  "admit_when": f"{day(admit_by)} {clock_time(admit_by)}", "place": place or "住院服务中心"}
        summary = f"床位已就绪：{values['ward']}{bed}床，{values['admit_by']}前入院"
        message = PlannedMessage(BED_READY, values, part=booking_id, urgent=True, booking_id=booking_id)
        return EventPlan(messages=self._booking_news(route, [message]),
                         clinic=ClinicUpdate("BED_READY", summary, appointment_time=admit_by, place=place))

    @staticmethod
    def clinic_only(kind: str, summary: str, reason: str = "") -> EventPlan:
        return EventPlan(clinic=ClinicUpdate(kind, summary, reason=reason))

    @staticmethod
    def _place_words(appt: Appointment | None) -> str:
        if appt is None:
            return ""
        p = appt.place
        return f"{p.hospital}{p.building}{p.floor}{p.room}"
