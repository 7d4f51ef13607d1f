"""`build(ctx)`: the scheduling service's servicer, consumer and periodic jobs."""
from __future__ import annotations

import asyncio

import asyncpg

from services.common import membership
from services.common.app import AppContext, ServiceParts
from services.common.logging import get_logger
from services.scheduling.adapters import repository as repo
from services.scheduling.domain.policy import URGENT_WINDOW_HOURS
from services.scheduling.entrypoints.grpc_api import registrar
from services.scheduling.entrypoints.handlers import subscription
from services.scheduling.service_layer import jobs
from services.scheduling.service_layer.allocation import Scheduler, reoptimise
from services.scheduling.settings import SchedulerSettings

log = get_logger(__name__)
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError)


class Reoptimiser:
    """Runs re-optimisation when capacity was freed (soon) and for every hospital with a
    waitlist (periodically), only for the hospitals of this replica's shard."""

    def __init__(self, pool: asyncpg.Pool, sched: Scheduler) -> None:
        self.pool = pool
        self.sched = sched
        self._woken: set[str] = set()
        self._wake = asyncio.Event()

    def wake(self, hospital_id: str) -> None:
        self._woken.add(hospital_id)
        self._wake.set()

    def _mine(self, hospital_id: str) -> bool:
        shard = self.sched.settings.hospital_shard
        return not shard or hospital_id in shard

    async def run_once(self, hospitals: set[str] | None = None) -> list[str]:
        async with self.pool.acquire() as conn:
            if hospitals is None:
                hospitals = set(await repo.hospitals_with_waitlist(conn))
            await repo.confirm_sent(conn)
        promoted: list[str] = []
        for h in sorted(x for x in hospitals if self._mine(x)):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    promoted += await reoptimise(conn, self.sched, h)
            except Exception as exc:  # noqa: BLE001 - one hospital's failure must not stop the others'
                log.warning("reoptimisation of a hospital failed, will retry", hospital_id=h, error=str(exc),
                            error_type=type(exc).__name__)
                self._woken.add(h)
        return promoted

    async def loop(self) -> None:
        while True:
            periodic = False
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.sched.settings.reoptimise_seconds)
                # The change that woke us commits right after; let it land.
                await asyncio.sleep(0.2)
            except asyncio.TimeoutError:
                periodic = True
            self._wake.clear()
            woken, self._woken = self._woken, set()
            try:
                await self.run_once(None if periodic else woken)
            except _DB_ERRORS as exc:
                log.warning("reoptimisation failed, will retry", error=str(exc))
                self._woken |= woken
            except Exception:  # noqa: BLE001 - a bad run must not end the job
                log.exception("reoptimisation error")


def build(ctx: AppContext) -> ServiceParts:
    settings = SchedulerSettings.from_settings(ctx.settings)
    sched = Scheduler(settings)
    reopt = Reoptimiser(ctx.pool, sched)
    sched.on_capacity_freed = reopt.wake

    async def release_loop() -> None:
        try:
            for p in await jobs.policies_releasing_too_early(ctx.pool):
                log.warning("reservation policy releases capacity too early for urgent referrals; set it again",
                            hospital_id=p["hospital_id"], resource_type=p["resource_type"],
                            release_hours=p["release_hours"], most=URGENT_WINDOW_HOURS - 1)
        except _DB_ERRORS as exc:
            log.warning("reservation policies not checked", error=str(exc))
        while True:
            # Sleep first: a release at the very start of a replica would race with whoever is
            # setting capacity up (a deploy, a test), and nothing is lost by waiting one poll.
            await asyncio.sleep(settings.release_poll_seconds)
            try:
                now = sched.clock()
                released = 0
                for hospital in settings.hospital_shard or (None,):
                    released += await jobs.release_due(ctx.pool, now, hospital)
                if released:
                    log.info("reserved capacity released", places=released)
            except _DB_ERRORS as exc:
                log.warning("release job failed, will retry", error=str(exc))
            except Exception:  # noqa: BLE001
                log.exception("release job error")

    return ServiceParts(registrars=[registrar(ctx.pool, sched)], subscriptions=[subscription(sched), membership.subscription("scheduling-membership")],
                        background=[reopt.loop, release_loop])
