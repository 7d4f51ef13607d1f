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
        def get(name: str, default: str) -> str:
            # Tests pass per-instance values through Settings.extra; processes use the env.
            return settings.extra.get(name) or settings.get(name, default)

        shard = tuple(h.strip() for h in get("SCHEDULING_HOSPITAL_SHARD", "").split(",") if h.strip())
        return cls(
            time_limit_seconds=float(get("SCHEDULER_TIME_LIMIT_SECONDS", "2")),
            workers=int(get("SCHEDULER_WORKERS", "2")),
            horizon_days=int(get("SCHEDULING_HORIZON_DAYS", "28")),
            hospital_shard=shard,
            release_poll_seconds=float(get("SCHEDULING_RELEASE_POLL_SECONDS", "60")),
            reoptimise_seconds=float(get("SCHEDULING_REOPTIMISE_SECONDS", "60")),
        )
