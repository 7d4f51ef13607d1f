"""`build(ctx)`: the referral service's parts for services.common.app."""
from __future__ import annotations

from datetime import timedelta

from services.common.app import AppContext, ServiceParts
from services.common.periodic import periodic
from services.referral.entrypoints import scheduling_events
from services.referral.entrypoints.grpc_api import ReferralServicer, registrar
from services.referral.entrypoints.watch import ChangeFeed
from services.referral.service_layer import membership, retention
from services.referral.service_layer.services import ReferralService


def build(ctx: AppContext) -> ServiceParts:
    svc = ReferralService(ctx.pool, ctx.pii)
    feed = ChangeFeed(ctx.settings.database_url, ctx.settings.schema,
                      poll_seconds=float(ctx.settings.get("REFERRAL_WATCH_POLL_SECONDS", "1.0")))
    sla_every = float(ctx.settings.get("REFERRAL_SLA_CHECK_SECONDS", "60"))
    sla_job = periodic("sla breaches reported", sla_every, svc.check_sla)
    retention_days = float(ctx.settings.get("REFERRAL_CHANGES_RETENTION_DAYS", "30"))
    purge_every = float(ctx.settings.get("REFERRAL_CHANGES_PURGE_SECONDS", "3600"))
    refresh_days = float(ctx.settings.get("REFERRAL_MEMBERSHIP_REFRESH_DAYS", "7"))
    membership_every = float(ctx.settings.get("REFERRAL_MEMBERSHIP_CHECK_SECONDS", "3600"))
    purge_job = periodic("watch change log purged", purge_every, lambda: retention.purge(
        ctx.pool, svc.clock(), timedelta(days=retention_days)))
    # At start (institutions never published, e.g. created before the event existed) and
    # then periodically (republished inside the stream's retention).
    membership_job = periodic("membership published", membership_every, lambda: membership.publish_due(
        ctx.pool, svc.clock(), timedelta(days=refresh_days)))

    return ServiceParts(registrars=[registrar(ReferralServicer(svc, feed))],
                        subscriptions=[scheduling_events.subscription(svc)],
                        background=[feed.run, sla_job, purge_job, membership_job], on_stop=[feed.close])
