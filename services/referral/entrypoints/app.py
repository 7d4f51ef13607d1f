"""`build(ctx)`: the referral service's parts for services.common.app."""
from __future__ import annotations

import asyncio

from services.common.app import AppContext, ServiceParts
from services.common.logging import get_logger
from services.referral.entrypoints import scheduling_events
from services.referral.entrypoints.grpc_api import ReferralServicer, registrar
from services.referral.entrypoints.watch import ChangeFeed
from services.referral.service_layer.services import ReferralService

log = get_logger(__name__)


def build(ctx: AppContext) -> ServiceParts:
    svc = ReferralService(ctx.pool, ctx.pii)
    feed = ChangeFeed(ctx.settings.database_url, ctx.settings.schema,
                      poll_seconds=float(ctx.settings.get("REFERRAL_WATCH_POLL_SECONDS", "1.0")))
    sla_every = float(ctx.settings.get("REFERRAL_SLA_CHECK_SECONDS", "60"))

    async def sla_job() -> None:
        while True:
            try:
                reported = await svc.check_sla()
                if reported:
                    log.info("sla breaches reported", count=reported)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed round is retried at the next tick
                log.warning("sla check failed", error=repr(exc))
            await asyncio.sleep(sla_every)

    return ServiceParts(registrars=[registrar(ReferralServicer(svc, feed))],
                        subscriptions=[scheduling_events.subscription(svc)],
                        background=[feed.run, sla_job], on_stop=[feed.close])
