"""Referral events reach JetStream without plaintext identifiers; the scheduling
service's events (real envelopes on JetStream) move the referral's state."""
import asyncio
import uuid
from datetime import datetime, timedelta, timezone

from google.protobuf import timestamp_pb2

from common.v1 import event_pb2
from referral.v1 import events_pb2, referral_service_pb2 as api, types_pb2 as rtypes
from scheduling.v1 import events_pb2 as sched
from services.common import messaging


async def _until(predicate, timeout=15.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        result = await predicate()
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


async def test_referral_events_reach_jetstream_without_identifiers(world, stack):
    broker = await messaging.Broker.connect(stack.nats_url, name="referral-test")
    try:
        await broker.ensure_stream("referral")
        sub = await broker.js.pull_subscribe(f"referral.v1.*.{world.hospital}", stream="REFERRAL")
        request = world.request()
        r = await world.stub.CreateReferral(request, metadata=world.md(world.clinics[0]))
        await world.call("AcceptReferral", world.hospital, r.name)
        seen: list[event_pb2.EventEnvelope] = []

        async def two():
            try:
                msgs = await sub.fetch(10, timeout=0.5)
            except Exception:  # noqa: BLE001 - nothing yet
                return False
            for m in msgs:
                await m.ack()
                assert request.patient.mobile.encode() not in m.data
                assert request.patient.id_number.encode() not in m.data
                env = event_pb2.EventEnvelope.FromString(m.data)
                (members if env.event_type == "referral.v1.InstitutionUpserted" else seen).append(env)
            return len(seen) >= 2

        members: list[event_pb2.EventEnvelope] = []
        await _until(two)
        # The membership of the consortium went out first (subject: the lead hospital).
        assert {e.aggregate_id for e in members} >= {world.hospital, *world.clinics}
        assert [e.event_type for e in seen] == ["referral.v1.ReferralSubmitted", "referral.v1.ReferralAccepted"]
        submitted = events_pb2.ReferralSubmitted()
        seen[0].payload.Unpack(submitted)
        snap = submitted.referral
        assert snap.referral_id == r.name.split("/")[1] and snap.hospital_id == world.hospital
        assert snap.patient.patient_id == r.patient.patient_id and snap.patient.mobile_ciphertext
        assert seen[0].aggregate_id == snap.referral_id and seen[0].hospital_id == world.hospital
    finally:
        await broker.close()


def _item(need_id: str, seconds: int) -> sched.BookedItem:
    return sched.BookedItem(item_id=uuid.uuid4().hex, need_id=need_id, kind=sched.ITEM_KIND_CONSULTATION,
                            start_time=timestamp_pb2.Timestamp(seconds=seconds),
                            end_time=timestamp_pb2.Timestamp(seconds=seconds + 900),
                            place=sched.Place(hospital_name="测试县人民医院", building="门诊楼", room="3诊室"),
                            department="neurology")


async def _publish(broker, event, hospital: str, referral_id: str) -> str:
    env = messaging.envelope(event, aggregate_id=referral_id, hospital_id=hospital)
    await broker.js.publish(messaging.subject_for(event, hospital), env.SerializeToString(),
                            headers={"Nats-Msg-Id": env.event_id})
    return env.event_id


async def test_scheduling_events_move_the_referral(world, stack):
    broker = await messaging.Broker.connect(stack.nats_url, name="scheduling-test")
    try:
        await broker.ensure_stream("scheduling")
        r = await world.call("AcceptReferral", world.hospital, (await world.create()).name)
        rid = r.name.split("/")[1]
        md = world.md(world.clinics[0])

        async def state_is(state):
            async def check():
                got = await world.stub.GetReferral(api.GetReferralRequest(name=r.name), metadata=md)
                return got if got.state == state else None
            return await _until(check)

        common = dict(referral_id=rid, hospital_id=world.hospital, sending_institution_id=world.clinics[0])
        await _publish(broker, sched.ReferralWaitlisted(reason_code="NO_CAPACITY_BEFORE_DEADLINE",
                                                        reason="号源已满", **common), world.hospital, rid)
        got = await state_is(rtypes.REFERRAL_STATE_WAITLISTED)
        assert got.waitlist_reason == "号源已满"
        event_id = await _publish(broker, sched.ReferralScheduled(booking_id="B1", items=[_item("c1", 1_900_000_000)],
                                                                  trips=1, **common), world.hospital, rid)
        got = await state_is(rtypes.REFERRAL_STATE_SCHEDULED)
        assert got.booking_id == "B1" and got.scheduled_items[0].start_time.seconds == 1_900_000_000
        assert "门诊楼" in got.scheduled_items[0].place
        await _publish(broker, sched.BookingRescheduled(booking_id="B1", items=[_item("c1", 1_900_086_400)],
                                                        reason="专家停诊", **common), world.hospital, rid)

        async def moved():
            got = await world.stub.GetReferral(api.GetReferralRequest(name=r.name), metadata=md)
            return got.scheduled_items and got.scheduled_items[0].start_time.seconds == 1_900_086_400
        await _until(moved)
        await _publish(broker, sched.BookingCancelled(booking_id="B1", reason="设备故障", **common), world.hospital, rid)
        got = await state_is(rtypes.REFERRAL_STATE_ACCEPTED)
        assert not got.booking_id
        # A redelivered event (same id, past the duplicate window's reach via a new
        # message id header) changes nothing: the inbox has it.
        env = messaging.envelope(sched.ReferralScheduled(booking_id="B1", items=[_item("c1", 1)], **common),
                                 aggregate_id=rid, hospital_id=world.hospital, event_id=event_id)
        await broker.js.publish(f"scheduling.v1.ReferralScheduled.{world.hospital}", env.SerializeToString(),
                                headers={"Nats-Msg-Id": uuid.uuid4().hex})
        await _publish(broker, sched.ReferralScheduled(booking_id="B2", items=[_item("c1", 1_900_172_800)], **common),
                       world.hospital, rid)
        got = await state_is(rtypes.REFERRAL_STATE_SCHEDULED)
        assert got.booking_id == "B2"
        states = [h.to_state for h in got.history]
        assert states == [1, 2, 4, 6, 7, 7, 4, 7]
        assert got.history[-1].actor == "service:scheduling"
    finally:
        await broker.close()


async def test_a_booking_cancelled_before_its_placement_arrives_stays_cancelled(world, stack, referral_app):
    """Published out of order: the cancellation of B1, then B1's earlier placement, then a
    newer booking B2. Each is acked (in the inbox, not dead-lettered); B1 never shows."""
    broker = await messaging.Broker.connect(stack.nats_url, name="scheduling-test")
    try:
        await broker.ensure_stream("scheduling")
        r = await world.call("AcceptReferral", world.hospital, (await world.create()).name)
        rid = r.name.split("/")[1]
        common = dict(referral_id=rid, hospital_id=world.hospital, sending_institution_id=world.clinics[0])
        now = datetime.now(timezone.utc)
        ids = []
        for event, occurred in ((sched.BookingCancelled(booking_id="B1", reason="设备故障", **common), now),
                                (sched.ReferralScheduled(booking_id="B1", items=[_item("c1", 1_900_000_000)],
                                                         **common), now - timedelta(minutes=1)),
                                (sched.ReferralScheduled(booking_id="B2", items=[_item("c1", 1_900_172_800)],
                                                         **common), now + timedelta(seconds=1))):
            env = messaging.envelope(event, aggregate_id=rid, hospital_id=world.hospital)
            env.occur_time.FromDatetime(occurred)
            await broker.js.publish(messaging.subject_for(event, world.hospital), env.SerializeToString(),
                                    headers={"Nats-Msg-Id": env.event_id})
            ids.append(env.event_id)
        pool = referral_app.ctx.pool

        async def all_handled():
            return await pool.fetchval("SELECT count(*) FROM inbox WHERE event_id::text = ANY($1::text[])", ids) == 3
        await _until(all_handled)
        got = await world.stub.GetReferral(api.GetReferralRequest(name=r.name), metadata=world.md(world.clinics[0]))
        assert (got.state, got.booking_id) == (rtypes.REFERRAL_STATE_SCHEDULED, "B2")
        assert [h.to_state for h in got.history] == [1, 2, 4, 7]
        assert not await pool.fetchval("SELECT count(*) FROM dead_letters WHERE event_id = ANY($1::text[])", ids)
    finally:
        await broker.close()
