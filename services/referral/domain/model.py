"""The Referral aggregate and its state machine. Pure: no I/O, no protobuf.

States change only through the named transition methods; each checks the current
state and the acting side, records who/when/from/to/why, and returns the domain
events the change causes. Integer values of the enums equal the proto enums so the
mapping layer stays trivial.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import date, datetime

from services.common.errors import FailedPrecondition, FieldViolation, InvalidArgument, PermissionDenied


class State(enum.IntEnum):
    DRAFT = 1
    SUBMITTED = 2
    RETURNED = 3
    ACCEPTED = 4
    REJECTED = 5
    WAITLISTED = 6
    SCHEDULED = 7
    ARRIVED = 8
    COMPLETED = 9
    CANCELLED = 10
    NO_SHOW = 11


STATE_NAMES_ZH = {
    State.DRAFT: "草稿", State.SUBMITTED: "已提交", State.RETURNED: "已退回", State.ACCEPTED: "已接收",
    State.REJECTED: "已拒绝", State.WAITLISTED: "候补中", State.SCHEDULED: "已预约", State.ARRIVED: "已到诊",
    State.COMPLETED: "已完成", State.CANCELLED: "已取消", State.NO_SHOW: "爽约",
}
TERMINAL = frozenset({State.REJECTED, State.COMPLETED, State.CANCELLED, State.NO_SHOW})


class Direction(enum.IntEnum):
    UP = 1
    DOWN = 2


class Urgency(enum.IntEnum):
    EMERGENCY = 1
    URGENT = 2
    ROUTINE = 3


class Level(enum.IntEnum):
    VILLAGE = 1
    TOWNSHIP = 2
    HOSPITAL = 3


class Purpose(enum.IntEnum):
    UNSPECIFIED = 0
    DIAGNOSIS = 1
    TREATMENT = 2
    REHABILITATION = 3
    CHRONIC_CARE = 4


class Side(enum.Enum):
    SENDER = "sender"
    RECEIVER = "receiver"
    EITHER = "either"
    SERVICE = "service"  # the scheduling service's events


@dataclass(frozen=True)
class Actor:
    subject: str
    institution_id: str
    is_service: bool = False


@dataclass
class Patient:
    """What the aggregate keeps of the patient: pseudonymous id, masks, ciphertexts."""
    patient_id: str
    name_masked: str
    gender: int  # 1 male, 2 female (proto Gender)
    birth_date: date
    id_number_masked: str
    mobile_masked: str
    id_number_ciphertext: str
    mobile_ciphertext: str
    name_ciphertext: str
    wechat_openid: str = ""


@dataclass
class Need:
    need_id: str
    kind: str  # consultation | exam | admission
    department: str = ""
    doctor_id: str = ""
    expert: bool = False
    modality: str = ""
    body_part: str = ""
    expected_nights: int = 0
    required_equipment: list[str] = field(default_factory=list)
    preferred_equipment: list[str] = field(default_factory=list)
    covered_by_prior_result: bool = False
    covering_result_reference: str = ""


@dataclass
class PriorResult:
    exam_type: str
    result_date: date
    institution_id: str
    reference: str
    body_part: str = ""
    summary: str = ""
    valid: bool = False


@dataclass
class Consent:
    given: bool
    recorded_by: str
    recorded_at: datetime
    method: str = ""
    withdrawn_at: datetime | None = None
    withdraw_reason: str = ""


@dataclass
class Completion:
    findings: str = ""
    treatment_summary: str = ""
    recommendations: str = ""
    down_referral_id: str = ""


@dataclass
class Billing:
    episode_id: str
    deductible_paid_fen: int = 0
    deductible_carried: bool = False
    deductible_waived: bool = False
    receiving_level: int = 0


@dataclass
class ScheduledItem:
    need_id: str
    start: datetime | None
    end: datetime | None
    place: str = ""
    department: str = ""
    modality: str = ""


@dataclass
class Transition:
    from_state: State | None
    to_state: State
    actor: str
    actor_institution_id: str
    reason: str
    at: datetime


@dataclass
class Event:
    """A domain event; the adapters turn it into a referral.v1 message."""
    kind: str
    reason: str = ""
    data: dict = field(default_factory=dict)


@dataclass
class Referral:
    id: str
    consortium_id: str
    direction: Direction
    sending_institution_id: str
    receiving_institution_id: str
    hospital_id: str
    urgency: Urgency
    patient: Patient
    diagnosis_code: str
    department: str
    created_by: str
    created_at: datetime
    state: State = State.DRAFT
    green_channel: bool = False
    diagnosis_text: str = ""
    clinical_summary: str = ""
    justification: str = ""
    purpose: Purpose = Purpose.UNSPECIFIED
    needs: list[Need] = field(default_factory=list)
    available_dates: list[date] = field(default_factory=list)
    prior_results: list[PriorResult] = field(default_factory=list)
    consent: Consent | None = None
    billing: Billing | None = None
    catalogue_disease: bool = False
    down_referral_recommended: bool = False
    origin_referral_id: str = ""
    completion: Completion | None = None
    care_plan: str = ""
    follow_up_dates: list[date] = field(default_factory=list)
    booking_id: str = ""
    scheduled_items: list[ScheduledItem] = field(default_factory=list)
    waitlist_reason: str = ""
    # When the newest scheduling event the referral has taken in happened (the
    # scheduler's clock, from the event's envelope): see "from the scheduling service".
    scheduling_event_at: datetime | None = None
    history: list[Transition] = field(default_factory=list)
    updated_at: datetime | None = None
    submitted_at: datetime | None = None
    accepted_at: datetime | None = None
    scheduled_at: datetime | None = None
    version: int = 0
    clinic_distance_km: float = 0.0
    additional_information: str = ""
    request_id: str = ""

    # --- helpers -------------------------------------------------------------------

    def side_of(self, actor: Actor) -> set[Side]:
        sides: set[Side] = set()
        if actor.is_service:
            sides.add(Side.SERVICE)
        if actor.institution_id == self.sending_institution_id:
            sides.add(Side.SENDER)
        if actor.institution_id == self.receiving_institution_id:
            sides.add(Side.RECEIVER)
        return sides

    def _require_side(self, action: str, actor: Actor) -> None:
        side = TRANSITIONS[action][2]
        allowed = {Side.SENDER, Side.RECEIVER} if side is Side.EITHER else {side}
        if not (self.side_of(actor) & allowed):
            who = {Side.SENDER: "转出机构", Side.RECEIVER: "接收机构", Side.SERVICE: "排程服务",
                   Side.EITHER: "转出或接收机构"}[side]
            raise PermissionDenied(f"只有{who}可以执行「{ACTION_NAMES_ZH[action]}」",
                                   reason=f"NOT_{side.name}")

    def _move(self, action: str, actor: Actor, now: datetime, reason: str = "") -> Event:
        sources, target, _ = TRANSITIONS[action]
        self._require_side(action, actor)
        if self.state not in sources:
            raise FailedPrecondition(
                f"转诊单当前状态为「{STATE_NAMES_ZH[self.state]}」，不能执行「{ACTION_NAMES_ZH[action]}」",
                reason="ILLEGAL_TRANSITION")
        previous = self.state
        self.state = target
        self.updated_at = now
        self.history.append(Transition(previous, target, actor.subject, actor.institution_id, reason, now))
        return Event(kind=EVENT_OF_ACTION.get(action, ""), reason=reason)

    @staticmethod
    def _require_reason(reason: str, action: str) -> None:
        if not reason.strip():
            raise InvalidArgument(FieldViolation("reason", f"「{ACTION_NAMES_ZH[action]}」必须填写原因"))

    def _require_consent(self) -> None:
        if self.consent is None or not self.consent.given or self.consent.withdrawn_at is not None:
            raise FailedPrecondition("未记录患者知情同意，不能提交转诊", reason="CONSENT_REQUIRED")

    # --- creation -------------------------------------------------------------------

    def created(self, actor: Actor, now: datetime) -> None:
        self.history.append(Transition(None, State.DRAFT, actor.subject, actor.institution_id, "", now))
        self.updated_at = now

    # --- transitions ------------------------------------------------------------------

    def submit(self, actor: Actor, now: datetime) -> list[Event]:
        self._require_consent()
        event = self._move("submit", actor, now)
        self.submitted_at = now
        return [event]

    def accept(self, actor: Actor, now: datetime, note: str = "") -> list[Event]:
        event = self._move("accept", actor, now, note)
        self.accepted_at = now
        return [event]

    def reject(self, actor: Actor, now: datetime, reason: str) -> list[Event]:
        self._require_reason(reason, "reject")
        return [self._move("reject", actor, now, reason)]

    def return_to_sender(self, actor: Actor, now: datetime, reason: str) -> list[Event]:
        self._require_reason(reason, "return")
        return [self._move("return", actor, now, reason)]

    def resubmit(self, actor: Actor, now: datetime, additional_information: str) -> list[Event]:
        self._require_consent()
        event = self._move("resubmit", actor, now, additional_information)
        if additional_information:
            self.additional_information = additional_information
        self.submitted_at = now
        event.kind = "submitted"
        return [event]

    def cancel(self, actor: Actor, now: datetime, reason: str) -> list[Event]:
        self._require_reason(reason, "cancel")
        return [self._move("cancel", actor, now, reason)]

    def withdraw_consent(self, actor: Actor, now: datetime, reason: str) -> list[Event]:
        event = self._move("withdraw_consent", actor, now, reason or "患者撤回知情同意")
        if self.consent is not None:
            self.consent.withdrawn_at = now
            self.consent.withdraw_reason = event.reason
        return [event]

    def record_arrival(self, actor: Actor, now: datetime) -> list[Event]:
        return [self._move("arrive", actor, now)]

    def record_no_show(self, actor: Actor, now: datetime, note: str = "") -> list[Event]:
        return [self._move("no_show", actor, now, note)]

    def rebook(self, actor: Actor, now: datetime, reason: str) -> list[Event]:
        """After a no-show the receiving side books the patient again: back to accepted, so
        the scheduling service places it afresh (a new ReferralAccepted). accepted_at and
        scheduled_at stay the first ones: the office's time-to-accept and time-to-schedule
        measure the hospital, not the patient's missed visit; the scheduling SLA counts from
        the rebook (the transition), see ReferralService.check_sla."""
        self._require_reason(reason, "rebook")
        event = self._move("rebook", actor, now, reason)
        self.booking_id = ""
        self.scheduled_items = []
        self.waitlist_reason = ""
        return [event]

    def edit(self, actor: Actor, now: datetime) -> None:
        """Editing (UpdateReferral) is the sender's, on a draft or a returned referral only."""
        if Side.SENDER not in self.side_of(actor):
            raise PermissionDenied("只有转出机构可以修改转诊单", reason="NOT_SENDER")
        if self.state not in EDITABLE:
            raise FailedPrecondition(
                f"转诊单当前状态为「{STATE_NAMES_ZH[self.state]}」，只有草稿或已退回的转诊单可以修改",
                reason="NOT_EDITABLE")
        self.updated_at = now

    def complete(self, actor: Actor, now: datetime, completion: Completion,
                 clinic_level_treats: bool) -> list[Event]:
        event = self._move("complete", actor, now)
        self.completion = completion
        # 病种目录: a patient treated upstairs for a disease the clinic treats goes back down.
        self.down_referral_recommended = self.direction is Direction.UP and clinic_level_treats
        return [event]

    # --- from the scheduling service -------------------------------------------------
    # Its events can arrive late and out of order (a redelivery after a failed handling,
    # overtaken by later events; several consumer processes): none may undo a newer one.
    # A referral has at most one live booking and a cancelled booking never comes back,
    # so a cancellation of the current booking always counts, and one of another booking
    # never takes the current one away. A placement (scheduled, rescheduled, waitlisted)
    # counts only when it happened after every scheduling event taken in, cancellations
    # included: nothing in the events orders the placement and the cancellation of one
    # booking (or two moves of it) but when they happened, so this compares their
    # envelopes' occurred_at (the scheduler's clock).
    # An event that does not count changes nothing and is no error: the consumer acks it.

    def _is_newest(self, occurred_at: datetime) -> bool:
        return self.scheduling_event_at is None or occurred_at > self.scheduling_event_at

    def _took_in(self, occurred_at: datetime) -> None:
        if self._is_newest(occurred_at):
            self.scheduling_event_at = occurred_at

    def waitlist(self, actor: Actor, now: datetime, reason: str, occurred_at: datetime) -> list[Event]:
        self._require_side("waitlist", actor)
        if not self._is_newest(occurred_at):
            return []
        self._move("waitlist", actor, now, reason)
        self._took_in(occurred_at)
        # The scheduler waitlists only a referral without a live booking.
        self.booking_id = ""
        self.scheduled_items = []
        self.waitlist_reason = reason
        return []

    def schedule(self, actor: Actor, now: datetime, booking_id: str, items: list[ScheduledItem],
                 occurred_at: datetime, reason: str = "") -> list[Event]:
        """A booking placed (ReferralScheduled) or moved (BookingRescheduled); a newer
        booking replaces the current one, whose cancellation may still be on its way."""
        self._require_side("schedule", actor)
        if not self._is_newest(occurred_at):
            return []
        action = "reschedule" if self.state is State.SCHEDULED else "schedule"
        self._move(action, actor, now, reason)
        self._took_in(occurred_at)
        self.booking_id = booking_id
        self.scheduled_items = items
        self.waitlist_reason = ""
        if self.scheduled_at is None:
            self.scheduled_at = now
        return []

    def booking_cancelled(self, actor: Actor, now: datetime, booking_id: str, reason: str,
                          occurred_at: datetime) -> list[Event]:
        self._require_side("booking_cancelled", actor)
        if booking_id == self.booking_id:
            ends = True  # however late: a cancelled booking never comes back
        elif self.booking_id:
            ends = False  # an older booking, since replaced by the current one
        else:
            # A booking whose placement has not arrived (or never will, being older than
            # what the referral shows): it came and went after a waitlisting older than this.
            ends = self.state is State.WAITLISTED and self._is_newest(occurred_at)
        if ends:
            self._move("booking_cancelled", actor, now, reason)
            self.booking_id = ""
            self.scheduled_items = []
            self.waitlist_reason = ""
        # Keeps out the placement of this booking, which happened before its cancellation.
        self._took_in(occurred_at)
        return []


_ACTIVE_BEFORE_VISIT = frozenset({State.DRAFT, State.SUBMITTED, State.RETURNED, State.ACCEPTED,
                                  State.WAITLISTED, State.SCHEDULED})

# action -> (allowed current states, next state, who may do it)
TRANSITIONS: dict[str, tuple[frozenset[State], State, Side]] = {
    "submit": (frozenset({State.DRAFT}), State.SUBMITTED, Side.SENDER),
    "accept": (frozenset({State.SUBMITTED}), State.ACCEPTED, Side.RECEIVER),
    "reject": (frozenset({State.SUBMITTED}), State.REJECTED, Side.RECEIVER),
    "return": (frozenset({State.SUBMITTED}), State.RETURNED, Side.RECEIVER),
    "resubmit": (frozenset({State.RETURNED}), State.SUBMITTED, Side.SENDER),
    "cancel": (_ACTIVE_BEFORE_VISIT, State.CANCELLED, Side.SENDER),
    "withdraw_consent": (_ACTIVE_BEFORE_VISIT, State.CANCELLED, Side.EITHER),
    # A down-referral has no hospital booking: the clinic records the visit after accepting.
    "arrive": (frozenset({State.ACCEPTED, State.SCHEDULED}), State.ARRIVED, Side.RECEIVER),
    "no_show": (frozenset({State.ACCEPTED, State.SCHEDULED}), State.NO_SHOW, Side.RECEIVER),
    "complete": (frozenset({State.ARRIVED}), State.COMPLETED, Side.RECEIVER),
    "waitlist": (frozenset({State.ACCEPTED, State.SCHEDULED}), State.WAITLISTED, Side.SERVICE),
    "schedule": (frozenset({State.ACCEPTED, State.WAITLISTED}), State.SCHEDULED, Side.SERVICE),
    "reschedule": (frozenset({State.SCHEDULED}), State.SCHEDULED, Side.SERVICE),
    "booking_cancelled": (frozenset({State.SCHEDULED, State.WAITLISTED}), State.ACCEPTED, Side.SERVICE),
    # After a no-show the receiving side may book the patient again (reason required).
    "rebook": (frozenset({State.NO_SHOW}), State.ACCEPTED, Side.RECEIVER),
}

EDITABLE = frozenset({State.DRAFT, State.RETURNED})

ACTION_NAMES_ZH = {
    "submit": "提交", "accept": "接收", "reject": "拒绝", "return": "退回补充材料", "resubmit": "重新提交",
    "cancel": "取消", "withdraw_consent": "撤回知情同意", "arrive": "登记到诊", "no_show": "登记爽约",
    "complete": "完成并反馈", "waitlist": "候补", "schedule": "预约", "reschedule": "改约",
    "booking_cancelled": "取消预约", "rebook": "爽约后重新预约",
}

EVENT_OF_ACTION = {
    "submit": "submitted", "accept": "accepted", "reject": "rejected", "return": "returned",
    "resubmit": "submitted", "cancel": "cancelled", "withdraw_consent": "cancelled", "arrive": "arrived",
    "no_show": "no_show", "complete": "completed", "rebook": "accepted",
}


@dataclass
class Institution:
    institution_id: str
    consortium_id: str
    display_name: str
    level: Level
    lead_hospital_id: str
    parent_institution_id: str = ""
    distance_km: float = 0.0
    address: str = ""


@dataclass
class ConsortiumSettings:
    consortium_id: str
    display_name: str
    emergency_acceptance_hours: int = 2
    urgent_acceptance_hours: int = 24
    routine_acceptance_hours: int = 72
    # exam type (upper case) -> validity window in days
    exam_validity: dict[str, int] = field(default_factory=dict)
    # Scheduling-stage targets (accepted -> scheduled), in hours.
    emergency_scheduling_hours: int = 4
    urgent_scheduling_hours: int = 48
    routine_scheduling_hours: int = 168

    def acceptance_hours(self, urgency: Urgency) -> int:
        return {Urgency.EMERGENCY: self.emergency_acceptance_hours, Urgency.URGENT: self.urgent_acceptance_hours,
                Urgency.ROUTINE: self.routine_acceptance_hours}[urgency]

    def scheduling_hours(self, urgency: Urgency) -> int:
        return {Urgency.EMERGENCY: self.emergency_scheduling_hours, Urgency.URGENT: self.urgent_scheduling_hours,
                Urgency.ROUTINE: self.routine_scheduling_hours}[urgency]

    def target_hours(self, stage: str, urgency: Urgency) -> int:
        return self.scheduling_hours(urgency) if stage == "scheduling" else self.acceptance_hours(urgency)
