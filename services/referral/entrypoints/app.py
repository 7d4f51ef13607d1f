"""`build(ctx)`: the referral service's parts for services.common.app."""
from __future__ import annotations

from services.common.app import AppContext, ServiceParts
from services.common.periodic import periodic
from services.referral.entrypoints import scheduling_events
from services.referral.entrypoints.grpc_api import ReferralServicer, registrar
from services.referral.entrypoints.watch import ChangeFeed
from services.referral.service_layer import membership, retention
from services.referral.service_layer.services import ReferralService
from services.referral.settings import ReferralSettings


def build(ctx: AppContext) -> ServiceParts:
    s = ReferralSettings.from_settings(ctx.settings)
    svc = ReferralService(ctx.pool, ctx.pii)
    feed = ChangeFeed(ctx.settings.database_url, ctx.settings.schema, poll_seconds=s.watch_poll_seconds)
    sla_job = periodic("sla breaches reported", s.sla_check_seconds, svc.check_sla)
    purge_job = periodic("watch change log purged", s.changes_purge_seconds, lambda: retention.purge(
        ctx.pool, svc.clock(), s.changes_retention))
    # At start (institutions never published, e.g. created before the event existed) and
    # then periodically (republished inside the stream's retention).
    membership_job = periodic("membership published", s.membership_check_seconds, lambda: membership.publish_due(
        ctx.pool, svc.clock(), s.membership_refresh))

    return ServiceParts(registrars=[registrar(ReferralServicer(svc, feed))],
                        subscriptions=[scheduling_events.subscription(svc)],
                        background=[feed.run, sla_job, purge_job, membership_job], on_stop=[feed.close])
