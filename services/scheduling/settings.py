"""The scheduler's own settings, read once from the environment (or test overrides)."""
from __future__ import annotations

from dataclasses import dataclass

from services.common.config import Settings


@dataclass(frozen=True)
class SchedulerSettings:
    time_limit_seconds: float = 2.0
    workers: int = 2
    horizon_days: int = 28
    # Comma-separated hospital ids this replica serves; empty = all.
    hospital_shard: tuple[str, ...] = ()
    release_poll_seconds: float = 60.0
    reoptimise_seconds: float = 60.0
    # Allocation retries when a concurrent writer took a place first.
    conflict_retries: int = 3

    @classmethod
    def from_settings(cls, settings: Settings) -> "SchedulerSettings":
        r = settings.reader()
        shard = tuple(h.strip() for h in r.text("SCHEDULING_HOSPITAL_SHARD").split(",") if h.strip())
        parsed = cls(
            time_limit_seconds=r.number("SCHEDULER_TIME_LIMIT_SECONDS", 2.0, minimum=0.1),
            workers=r.integer("SCHEDULER_WORKERS", 2, minimum=1),
            horizon_days=r.integer("SCHEDULING_HORIZON_DAYS", 28, minimum=1),
            hospital_shard=shard,
            release_poll_seconds=r.number("SCHEDULING_RELEASE_POLL_SECONDS", 60.0, minimum=0.01),
            reoptimise_seconds=r.number("SCHEDULING_REOPTIMISE_SECONDS", 60.0, minimum=0.01),
        )
        r.check()
        return parsed
