"""The referral service's own settings, read once and checked before it connects."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from services.common.config import Settings


@dataclass(frozen=True)
class ReferralSettings:
    watch_poll_seconds: float = 1.0
    sla_check_seconds: float = 60.0
    changes_retention: timedelta = timedelta(days=30)
    changes_purge_seconds: float = 3600.0
    membership_refresh: timedelta = timedelta(days=7)
    membership_check_seconds: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> "ReferralSettings":
        r = settings.reader()
        parsed = cls(
            watch_poll_seconds=r.number("REFERRAL_WATCH_POLL_SECONDS", 1.0, minimum=0.01),
            sla_check_seconds=r.number("REFERRAL_SLA_CHECK_SECONDS", 60.0, minimum=0.01),
            changes_retention=timedelta(days=r.number("REFERRAL_CHANGES_RETENTION_DAYS", 30.0, minimum=0.0)),
            changes_purge_seconds=r.number("REFERRAL_CHANGES_PURGE_SECONDS", 3600.0, minimum=0.01),
            membership_refresh=timedelta(days=r.number("REFERRAL_MEMBERSHIP_REFRESH_DAYS", 7.0, minimum=0.0)),
            membership_check_seconds=r.number("REFERRAL_MEMBERSHIP_CHECK_SECONDS", 3600.0, minimum=0.01),
        )
        r.check()
        return parsed
