"""Pure rules: which channel, when (quiet hours, caps), and how long to wait before a retry."""
from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from services.notify.domain.model import SHANGHAI, Channel, Contact, SkipReason

_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class QuietHours:
    """A daily window (Asia/Shanghai wall clock) in which non-urgent messages wait."""
    start: time | None = None
    end: time | None = None

    @classmethod
    def parse(cls, spec: str) -> "QuietHours":
        """'21:00-08:00'; empty or 'off' means none."""
        spec = spec.strip()
        if not spec or spec.lower() in ("off", "none"):
            return cls()
        try:
            a, b = (part.strip() for part in spec.split("-"))
            ma, mb = _HHMM.match(a), _HHMM.match(b)
            if not ma or not mb:
                raise ValueError
        except ValueError:
            raise ValueError(f"QUIET_HOURS must look like 21:00-08:00, got {spec!r}") from None
        start, end = time(int(ma[1]), int(ma[2])), time(int(mb[1]), int(mb[2]))
        return cls() if start == end else cls(start, end)

    def contains(self, moment: datetime) -> bool:
        if self.start is None or self.end is None:
            return False
        t = moment.astimezone(SHANGHAI).time()
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def next_allowed(self, moment: datetime) -> datetime:
        """`moment` itself when outside the window, else the window's end."""
        if not self.contains(moment):
            return moment
        local = moment.astimezone(SHANGHAI)
        end = local.replace(hour=self.end.hour, minute=self.end.minute, second=0, microsecond=0)
        if end <= local:
            end += timedelta(days=1)
        return end


def waits_for_quiet_hours(urgent: bool, contact: Contact) -> bool:
    return not (urgent and contact.urgent_ignores_quiet_hours)


def choose_channels(contact: Contact, *, essential: bool, wechat_template: str) -> list[Channel] | SkipReason:
    """Channels in the order to try; the first is used, the rest are fallbacks. WeChat is
    usable when the patient has an openid that has not refused `wechat_template`."""
    if not contact.consent:
        return SkipReason.NO_CONSENT
    if not essential and contact.opt_out_non_essential:
        return SkipReason.OPTED_OUT
    usable = {Channel.WECHAT: bool(contact.wechat_openid) and wechat_template not in contact.wechat_refused_templates,
              Channel.SMS: contact.has_mobile}
    # Unless the patient ordered otherwise, WeChat first: free, richer, and read in-app.
    order = list(contact.channels) or [Channel.WECHAT, Channel.SMS]
    chosen = [c for c in dict.fromkeys(order) if usable[c]]
    return chosen or SkipReason.NO_CONTACT


@dataclass(frozen=True)
class Caps:
    """Our own per-number limits, kept below the SMS vendors' flow control."""
    same_template_per_day: int = 3
    per_day: int = 8
    per_hour: int = 4
    min_spacing: timedelta = timedelta(seconds=35)


def cap_deferral(now: datetime, caps: Caps, *, same_template_today: Sequence[datetime],
                 all_recent: Sequence[datetime]) -> datetime | None:
    """When the next SMS to this number may go, or None if it may go now.

    `all_recent` are this number's SMS sends of the last day, `same_template_today` those
    of this template since local midnight.
    """
    local_midnight = now.astimezone(SHANGHAI).replace(hour=0, minute=0, second=0, microsecond=0)
    tomorrow = local_midnight + timedelta(days=1)
    if len(same_template_today) >= caps.same_template_per_day:
        return tomorrow
    today = [t for t in all_recent if t >= local_midnight]
    if len(today) >= caps.per_day:
        return tomorrow
    last_hour = sorted(t for t in all_recent if t > now - timedelta(hours=1))
    if len(last_hour) >= caps.per_hour:
        return last_hour[len(last_hour) - caps.per_hour] + timedelta(hours=1)
    if all_recent:
        latest = max(all_recent)
        if now - latest < caps.min_spacing:
            return latest + caps.min_spacing
    return None


@dataclass(frozen=True)
class RetryPolicy:
    base: timedelta = timedelta(seconds=30)
    cap: timedelta = timedelta(minutes=30)
    max_attempts: int = 5

    def delay(self, attempt: int, rng: random.Random | None = None) -> timedelta:
        """Exponential backoff with jitter (half fixed, half random) after `attempt` tries."""
        ceiling = min(self.cap.total_seconds(), self.base.total_seconds() * 2 ** max(0, attempt - 1))
        r = (rng or random).random()
        return timedelta(seconds=ceiling / 2 + r * ceiling / 2)

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts
