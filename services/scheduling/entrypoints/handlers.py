"""Referral events the scheduler acts on; each runs inside the consumer's inbox transaction."""
from __future__ import annotations

import re
from datetime import timezone

from referral.v1 import events_pb2 as revents
from referral.v1 import types_pb2 as rtypes
from services.common.consumer import PermanentError, Subscription
from services.common.errors import InvalidArgument
from services.scheduling.adapters import repository as repo
from services.scheduling.entrypoints.grpc_api import validate_snapshot
from services.scheduling.service_layer import bookings
from services.scheduling.service_layer.allocation import Scheduler, allocate

CONSUMED = (revents.ReferralAccepted, revents.ReferralCancelled, revents.PatientNoShow, revents.PatientArrived)


def subscription(sched: Scheduler) -> Subscription:
    shard = sched.settings.hospital_shard
    tokens = shard or ("*",)
    durable = "scheduling" if not shard else "scheduling_" + re.sub(r"[^A-Za-z0-9_-]", "_", "_".join(sorted(shard)))
    subjects = [f"{t.DESCRIPTOR.full_name}.{h}" for t in CONSUMED for h in tokens]

    async def accepted(conn, env, event: revents.ReferralAccepted) -> None:
        if event.referral.direction == rtypes.DIRECTION_DOWN:
            # A down-referral goes to a clinic: the hospital has nothing to book for it, and
            # trying would waitlist it for capacity that can never come.
            return
        try:
            validate_snapshot(event.referral)
        except InvalidArgument as exc:
            raise PermanentError(exc.message) from exc
        # Accepted again after a no-show (RebookReferral): a new event id, so a fresh placement.
        await repo.supersede_no_show(conn, event.referral.referral_id)
        accepted_at = env.occur_time.ToDatetime(tzinfo=timezone.utc) if env.HasField("occur_time") else None
        await allocate(conn, sched, event.referral, request_id=env.request_id, accepted_at=accepted_at)

    async def cancelled(conn, env, event: revents.ReferralCancelled) -> None:
        hospital = await bookings.cancel_referral(conn, event.referral.referral_id, event.reason)
        if hospital:
            sched.on_capacity_freed(hospital)

    async def no_show(conn, env, event: revents.PatientNoShow) -> None:
        hospital = await bookings.mark(conn, event.referral.referral_id, "NO_SHOW")
        if hospital:  # an admission's unused nights went back to the board
            sched.on_capacity_freed(hospital)

    async def arrived(conn, env, event: revents.PatientArrived) -> None:
        await bookings.mark(conn, event.referral.referral_id, "ARRIVED")

    return (Subscription(durable=durable, stream="REFERRAL", filter_subjects=subjects)
            .on(revents.ReferralAccepted, accepted).on(revents.ReferralCancelled, cancelled)
            .on(revents.PatientNoShow, no_show).on(revents.PatientArrived, arrived))
