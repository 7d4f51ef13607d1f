"""The notify model: channels, delivery states, contacts and what an event asks for."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

# The associated data a mobile is sealed under, shared with the referral service.
from services.common.pii import MOBILE_CONTEXT  # noqa: F401 - re-exported for the notify layers

SHANGHAI = ZoneInfo("Asia/Shanghai")


class Channel(enum.StrEnum):
    WECHAT = "wechat"
    SMS = "sms"


class DeliveryStatus(enum.StrEnum):
    PENDING = "PENDING"
    SENDING = "SENDING"
    SENT = "SENT"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    FELL_BACK = "FELL_BACK"


# A delivery in one of these is over; nothing may move it back to sending.
FINAL = frozenset({DeliveryStatus.DELIVERED, DeliveryStatus.FAILED, DeliveryStatus.CANCELLED,
                   DeliveryStatus.FELL_BACK})


def delivery_rate(*, delivered: int, sent: int, failed: int, fell_back: int) -> float:
    """Of the messages a channel took or tried (still with the vendor, delivered, failed, or
    moved on to the patient's next channel), the share it delivered; 0 when it had none.
    A message the vendor accepted and then reported undelivered counts against it, whether
    another channel then reached the patient or not."""
    tried = sent + delivered + failed + fell_back
    return delivered / tried if tried else 0.0


class SkipReason(enum.StrEnum):
    NO_CONSENT = "NO_CONSENT"
    OPTED_OUT = "OPTED_OUT"
    NO_CONTACT = "NO_CONTACT"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True)
class Contact:
    """What notify knows of a patient's reachability; the mobile stays encrypted here."""
    patient_id: str
    has_mobile: bool = False
    wechat_openid: str = ""
    # WeChat template ids this openid has refused (rejected, or answered 43101 for)
    wechat_refused_templates: frozenset[str] = frozenset()
    consent: bool = True
    opt_out_non_essential: bool = False
    urgent_ignores_quiet_hours: bool = True
    channels: tuple[Channel, ...] = ()


@dataclass(frozen=True)
class Place:
    hospital: str = ""
    building: str = ""
    floor: str = ""
    room: str = ""


@dataclass(frozen=True)
class Appointment:
    """One booked item, in the words the patient needs."""
    item_id: str
    kind: str  # consultation | exam | admission
    start: datetime
    place: Place
    department: str = ""
    modality: str = ""
    preparation: str = ""
    ward: str = ""
    bed: str = ""


@dataclass(frozen=True)
class Route:
    """Who a referral's messages go to and who hears about it."""
    referral_id: str
    patient_id: str
    hospital_id: str
    clinic_id: str
    department: str = ""
    urgent: bool = False
    # The referral was cancelled (a final state): the patient was told its appointments went with it.
    cancelled: bool = False


@dataclass(frozen=True)
class PlannedMessage:
    """One message to the patient that an event calls for."""
    template: str
    values: dict[str, str]
    part: str = ""  # distinguishes several messages of one template for one event
    urgent: bool = False
    not_before: datetime | None = None
    expires_at: datetime | None = None
    booking_id: str = ""
    reminder: bool = False
    # None: as its template says. The instructions message is as essential as what it completes.
    essential: bool | None = None
    # The parts whose messages this one completes (their instructions, whole).
    covers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClinicUpdate:
    kind: str  # ClinicUpdateKind suffix, e.g. SCHEDULED
    summary: str
    appointment_time: datetime | None = None
    place: str = ""
    reason: str = ""


@dataclass
class EventPlan:
    messages: list[PlannedMessage] = field(default_factory=list)
    clinic: ClinicUpdate | None = None
    # Earlier messages this event makes untrue: whichever of their deliveries still wait are
    # cancelled, before the messages above are created. Every one of the referral's, or every
    # one of a booking's except those of the items a reschedule left where they were.
    cancel_pending_of_referral: bool = False
    cancel_pending_of_booking: str = ""
    keep_pending_of_items: frozenset[str] = frozenset()
