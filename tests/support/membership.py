"""Consortium membership as the referral service publishes it, for services tested alone."""
from __future__ import annotations

import asyncio

import asyncpg

from referral.v1 import events_pb2 as ref_ev
from services.common import messaging

HOSPITAL, TOWNSHIP, VILLAGE = 3, 2, 1


async def publish_members(broker: messaging.Broker, consortium: str, hospital: str, *clinics: str) -> None:
    """referral.v1.InstitutionUpserted for a hospital and clinics led by it, as the referral
    service's outbox would put them on the REFERRAL stream."""
    await broker.ensure_stream("referral")
    members = [(hospital, HOSPITAL)] + [(c, TOWNSHIP) for c in clinics]
    for institution_id, level in members:
        event = ref_ev.InstitutionUpserted(institution_id=institution_id, consortium_id=consortium, level=level,
                                           lead_hospital_id=hospital, distance_km=0 if level == HOSPITAL else 30)
        env = messaging.envelope(event, aggregate_id=institution_id, hospital_id=hospital)
        await broker.js.publish(messaging.subject_for(event, hospital), env.SerializeToString(),
                                headers={"Nats-Msg-Id": env.event_id})


async def wait_members(pool: asyncpg.Pool, *institution_ids: str, timeout: float = 15.0) -> None:
    """Until the service's consumer has stored them in its `memberships` table."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        known = await pool.fetchval("SELECT count(*) FROM memberships WHERE institution_id = ANY($1::text[])",
                                    list(institution_ids))
        if known == len(set(institution_ids)):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"membership of {institution_ids} not received")
        await asyncio.sleep(0.1)
