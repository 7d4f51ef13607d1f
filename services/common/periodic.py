"""Background housekeeping: a step run every so often for as long as the service runs."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from services.common.logging import get_logger

log = get_logger(__name__)


def periodic(name: str, every: float, step: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[None]]:
    """A job for `ServiceParts.background`: runs `step` now and then every `every` seconds,
    logging `name` with the count it returns when that is not zero. A failed round is
    logged and retried at the next tick: housekeeping must outlive a database restart."""
    async def job() -> None:
        while True:
            try:
                done = await step()
                if done:
                    log.info(name, count=done)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed round is retried at the next tick
                log.warning(f"{name} failed", error=repr(exc))
            await asyncio.sleep(every)
    job.__qualname__ = f"periodic {name!r}"  # how a failed liveness names it
    return job
