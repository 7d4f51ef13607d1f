"""Membership reaches scheduling by the referral service's events: a consortium office
reads the aggregates of its own consortium's hospitals only, a clinic doctor the
availability of its own consortium's hospitals only; a hospital always its own. And a
referral accepted again after a no-show (RebookReferral) is placed afresh."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import grpc
import pytest

from common.v1 import event_pb2
from referral.v1 import events_pb2 as revents
from scheduling.v1 import scheduling_service_pb2 as pb
from services.common import membership, messaging
from services.common.auth import Role
from tests.support.membership import publish_members, wait_members

from .conftest import accept, publish_event, referral, session, today


async def _denied(call, *codes: grpc.StatusCode) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() in (codes or (grpc.StatusCode.NOT_FOUND,)), info.value.details()


async def test_aggregates_follow_consortium_membership(stack, app, stub, hospital):
    mine, theirs = f"CM{uuid.uuid4().hex[:6]}", f"CX{uuid.uuid4().hex[:6]}"
    clinic, foreign_clinic, foreign_hospital = f"K{hospital}", f"KX{hospital}", f"HX{hospital}"
    office = stack.metadata(mine, Role.CONSORTIUM_OFFICE)
    foreign_office = stack.metadata(theirs, Role.CONSORTIUM_OFFICE)
    doctor = stack.metadata(clinic, Role.CLINIC_DOCTOR)
    utilization = pb.GetUtilizationRequest(hospital_id=hospital)
    availability = pb.ListAvailabilityRequest(hospital_id=hospital)

    # Before any membership is known: the hospital reads its own, nobody else anything.
    await stub.GetUtilization(utilization, metadata=stack.metadata(hospital, Role.REFERRAL_DESK))
    await stub.ListAvailability(availability, metadata=stack.metadata(hospital, Role.REFERRAL_DESK))
    await _denied(stub.GetUtilization(utilization, metadata=office))
    await _denied(stub.ListAvailability(availability, metadata=doctor))

    await publish_members(app.ctx.broker, mine, hospital, clinic)
    await publish_members(app.ctx.broker, theirs, foreign_hospital, foreign_clinic)
    await wait_members(app.ctx.pool, hospital, clinic, foreign_hospital, foreign_clinic)
    await stub.GetUtilization(utilization, metadata=office)
    await stub.ListAvailability(availability, metadata=office)
    await stub.ListAvailability(availability, metadata=doctor)
    # The token's `cons` claim names the consortium as well as an office id equal to it.
    await stub.GetUtilization(utilization, metadata=(("authorization", "Bearer " + stack.token(
        "OFFICE-1", Role.CONSORTIUM_OFFICE, consortium_id=mine)),))
    for md in (foreign_office, stack.metadata(foreign_clinic, Role.CLINIC_DOCTOR),
               stack.metadata(foreign_hospital, Role.REFERRAL_DESK)):
        # (a clinic doctor may not read utilisation at all)
        await _denied(stub.GetUtilization(utilization, metadata=md), grpc.StatusCode.NOT_FOUND,
                      grpc.StatusCode.PERMISSION_DENIED)
        await _denied(stub.ListAvailability(availability, metadata=md))
    # A doctor's clinic must be a member too, not merely the hospital.
    await _denied(stub.ListAvailability(availability, metadata=stack.metadata("K-unknown", Role.CLINIC_DOCTOR)))
    # Patient data and writes stay the hospital's own, membership or not.
    for call in (stub.GetBedBoard(pb.GetBedBoardRequest(hospital_id=hospital), metadata=office),
                 stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital), metadata=office),
                 stub.GetBedBoard(pb.GetBedBoardRequest(hospital_id=hospital), metadata=doctor)):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED)


async def test_the_newest_membership_event_wins(stack, app, hospital):
    clinic = f"K{hospital}"
    event = revents.InstitutionUpserted(institution_id=clinic, consortium_id="NEW", level=2,
                                        lead_hospital_id=hospital)
    now = datetime.now(timezone.utc)
    async with app.ctx.pool.acquire() as conn:
        for consortium, when in (("NEW", now), ("OLD", now - timedelta(days=1))):
            event.consortium_id = consortium
            env = messaging.envelope(event, aggregate_id=clinic, hospital_id=hospital)
            env.occur_time.FromDatetime(when)
            await membership.upsert(conn, env, event)
        assert await membership.consortium_of(conn, clinic) == "NEW"
        # An envelope without occur time still lands (as of now).
        event.consortium_id = "LATEST"
        await membership.upsert(conn, event_pb2.EventEnvelope(event_id="x"), event)
        assert await membership.consortium_of(conn, clinic) == "LATEST"


async def test_accepted_again_after_a_no_show_is_a_fresh_placement(stack, app, stub, events, hospital):
    desk = stack.metadata(hospital, Role.REFERRAL_DESK)
    day = today() + timedelta(days=3)
    await stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[
        session(f"{hospital}-S{i}", day + timedelta(days=i), total=10, reserved=0) for i in range(3)]),
        metadata=desk)
    snap = referral(hospital)
    await accept(app, snap)
    [first] = await events.wait("ReferralScheduled", referral_id=snap.referral_id)
    await publish_event(app, revents.PatientNoShow(referral=snap), snap)
    async def no_show():
        return await app.ctx.pool.fetchval("SELECT state FROM bookings WHERE booking_id = $1", first.booking_id)
    for _ in range(100):
        if await no_show() == "NO_SHOW":
            break
        await asyncio.sleep(0.1)
    assert await no_show() == "NO_SHOW"
    # RebookReferral: the referral service publishes ReferralAccepted again (a new event id).
    await accept(app, snap)
    scheduled = await events.wait("ReferralScheduled", count=2, referral_id=snap.referral_id)
    second = scheduled[1]
    assert second.booking_id != first.booking_id
    rows = await app.ctx.pool.fetch("SELECT booking_id, state, superseded_at IS NOT NULL AS old FROM bookings "
                                    "WHERE referral_id = $1 ORDER BY created_at", snap.referral_id)
    assert [(r["booking_id"], r["state"], r["old"]) for r in rows][0] == (first.booking_id, "NO_SHOW", True)
    assert rows[1]["booking_id"] == second.booking_id and rows[1]["state"] in ("TENTATIVE", "CONFIRMED")
    assert not rows[1]["old"]
