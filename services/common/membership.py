"""Consortium membership as the referral service publishes it (referral.v1.InstitutionUpserted),
kept by scheduling and notify in a `memberships` table of their own schema, and the
authorization rule they share for per-hospital aggregates.

The referral service owns membership; the other services only hold a copy, upserted by
a durable consumer (DeliverPolicy.ALL: a fresh schema learns the full membership from
the stream, which the referral service keeps populated by republishing every
institution well inside the stream's retention). An unknown institution is outside every
consortium: the check fails closed until its event arrives, except a hospital reading
its own data, which never depends on membership.
"""
from __future__ import annotations

from datetime import timezone

import asyncpg

from common.v1 import event_pb2
from referral.v1 import events_pb2 as ref_ev
from services.common.auth import Caller, Role
from services.common.consumer import Subscription

SUBJECT = f"{ref_ev.InstitutionUpserted.DESCRIPTOR.full_name}.>"


async def upsert(conn: asyncpg.Connection, env: event_pb2.EventEnvelope, event: ref_ev.InstitutionUpserted) -> None:
    """Newest event wins: a republished older snapshot never overwrites a later change."""
    if not event.institution_id or not event.consortium_id:
        return
    occurred = env.occur_time.ToDatetime(tzinfo=timezone.utc) if env.HasField("occur_time") else None
    await conn.execute(
        """INSERT INTO memberships (institution_id, consortium_id, level, lead_hospital_id, parent_institution_id,
                                    distance_km, occurred_at)
           VALUES ($1, $2, $3, $4, $5, $6, coalesce($7::timestamptz, now()))
           ON CONFLICT (institution_id) DO UPDATE SET consortium_id = EXCLUDED.consortium_id,
               level = EXCLUDED.level, lead_hospital_id = EXCLUDED.lead_hospital_id,
               parent_institution_id = EXCLUDED.parent_institution_id, distance_km = EXCLUDED.distance_km,
               occurred_at = EXCLUDED.occurred_at, updated_at = now()
           WHERE memberships.occurred_at <= EXCLUDED.occurred_at""",
        event.institution_id, event.consortium_id, int(event.level), event.lead_hospital_id,
        event.parent_institution_id, event.distance_km, occurred)


def subscription(durable: str) -> Subscription:
    """Its own durable consumer, so membership can be replayed (delete the consumer) without
    replaying anything else."""
    async def handle(conn, env, event: ref_ev.InstitutionUpserted) -> None:
        await upsert(conn, env, event)
    return Subscription(durable=durable, stream="REFERRAL", filter_subjects=[SUBJECT]).on(
        ref_ev.InstitutionUpserted, handle)


async def consortium_of(conn: asyncpg.Connection, institution_id: str) -> str | None:
    return await conn.fetchval("SELECT consortium_id FROM memberships WHERE institution_id = $1", institution_id)


async def members_of(conn: asyncpg.Connection, consortium_id: str) -> list[str]:
    rows = await conn.fetch("SELECT institution_id FROM memberships WHERE consortium_id = $1", consortium_id)
    return [r["institution_id"] for r in rows]


def office_consortium(caller: Caller) -> str:
    """An office's token names its consortium, or the office is registered under its id."""
    return caller.consortium_id or caller.institution_id


async def may_read_hospital(conn: asyncpg.Connection, caller: Caller, hospital_id: str) -> bool:
    """Per-hospital aggregates (availability, utilisation, delivery statistics):
    the service role anywhere; a hospital its own; a consortium office the hospitals of
    its consortium; a clinic doctor the hospitals of its own consortium."""
    if caller.role is Role.SERVICE or caller.institution_id == hospital_id:
        return True
    if caller.role is Role.CONSORTIUM_OFFICE:
        return await consortium_of(conn, hospital_id) == office_consortium(caller)
    if caller.role is Role.CLINIC_DOCTOR:
        theirs = await conn.fetch("SELECT institution_id, consortium_id FROM memberships "
                                  "WHERE institution_id = ANY($1::text[])", [caller.institution_id, hospital_id])
        found = {r["institution_id"]: r["consortium_id"] for r in theirs}
        return len(found) == 2 and found[caller.institution_id] == found[hospital_id]
    return False
