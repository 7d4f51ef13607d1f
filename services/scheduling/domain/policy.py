"""Reservation policy: how much capacity is kept for referrals and when it goes back.

Beijing's rule is the default: at least 30 % of a session's places go to consortium
clinics, expert sessions have their own floor, and what is still unbooked a fixed
number of hours before it starts returns to the hospital's general pool.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from services.scheduling.engine import Deadlines

RESOURCE_TYPES = ("outpatient", "exam", "bed")

# An urgent referral must be booked within this many hours of its acceptance (the engine's
# hard deadline). Reserved capacity that goes back to the general pool this long or longer
# before it starts is never inside an urgent referral's window: such a policy reserves for
# routine referrals only, so it is refused.
URGENT_WINDOW_HOURS = 24 * Deadlines().urgent_days
# Half the urgent window: an urgent referral accepted at any hour still finds the reserved
# capacity of the second half of its window.
DEFAULT_RELEASE_HOURS = URGENT_WINDOW_HOURS // 2


@dataclass(frozen=True)
class ReservationPolicy:
    hospital_id: str
    resource_type: str
    reserved_share: float = 0.30
    expert_floor_share: float = 0.0
    release_hours: int = DEFAULT_RELEASE_HOURS
    early_release_days: int = 14
    clinic_quotas: dict[str, int] = field(default_factory=dict)
    public_release_days: int = 0

    def minimum_reserved(self, total_places: int, expert: bool) -> int:
        share = max(self.reserved_share, self.expert_floor_share if expert else 0.0)
        return min(total_places, math.ceil(round(total_places * share, 6)))

    def release_at(self, start: datetime) -> datetime:
        """The moment unbooked reserved capacity starting at `start` returns to the pool."""
        return start - timedelta(hours=self.release_hours)

    def is_due(self, start: datetime, now: datetime) -> bool:
        return now >= self.release_at(start)

    # Early opening (Beijing: consortium clinics get the slots two weeks before the
    # public). The public may book a day's slots public_release_days before that day;
    # clinics early_release_days earlier still. A referral may be booked into a slot of
    # local day D only when D - clinic_window_days <= today: ListAvailability lists no
    # later slot and the engine's horizon for the resource ends there. Outpatient and
    # exam slots only: beds follow the bed board.
    @property
    def clinic_window_days(self) -> int:
        return max(0, self.public_release_days) + max(0, self.early_release_days)

    def opens_on(self, day: date) -> date:
        """The local day from which clinics may book slots of `day`."""
        return day - timedelta(days=self.clinic_window_days)

    def is_open(self, day: date, today: date) -> bool:
        return self.opens_on(day) <= today

    def last_open_day(self, today: date) -> date:
        return today + timedelta(days=self.clinic_window_days)


def default_policy(hospital_id: str, resource_type: str) -> ReservationPolicy:
    return ReservationPolicy(hospital_id, resource_type)


def spread(count: int, among: int) -> list[int]:
    """Indices of `count` items spread evenly over `among`, so the reservation covers the
    whole day rather than its first hours."""
    count = max(0, min(count, among))
    return sorted({(i * among) // count for i in range(count)}) if count else []


def distribute(places: int, slots: int) -> list[int]:
    """Places per slot when a session's places are shared out over its slots."""
    if slots <= 0:
        return []
    base, extra = divmod(max(0, places), slots)
    extra_at = set(spread(extra, slots))
    return [base + (1 if i in extra_at else 0) for i in range(slots)]

# Beijing: at least 30 % of outpatient slots go to consortium clinics first.
MIN_OUTPATIENT_SHARE = 0.30
