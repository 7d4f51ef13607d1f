"""A caller sees only its own (get, list, watch); a watch resumes from its cursor
without missing or repeating a change."""
import asyncio
import uuid

import grpc

from referral.v1 import referral_service_pb2 as api, types_pb2 as rtypes

from .world import expect_error, new_world


async def _take(stream, n, timeout=10.0):
    out = []
    async def read():
        async for change in stream:
            out.append(change)
            if len(out) == n:
                return
    await asyncio.wait_for(read(), timeout)
    return out


async def test_clinic_cannot_see_another_clinics_referral(world, stack, stub):
    r = await world.create(clinic=world.clinics[0])
    other = world.md(world.clinics[1])
    await expect_error(grpc.StatusCode.NOT_FOUND, stub.GetReferral(api.GetReferralRequest(name=r.name), metadata=other))
    await expect_error(grpc.StatusCode.NOT_FOUND, world.call("CancelReferral", world.clinics[1], r.name, reason="x"))
    listed = await stub.ListReferrals(api.ListReferralsRequest(), metadata=other)
    assert r.name not in {x.name for x in listed.referrals}
    # Asking for the other clinic's referrals by filter still returns only one's own.
    listed = await stub.ListReferrals(api.ListReferralsRequest(sending_institution_id=world.clinics[0]), metadata=other)
    assert not listed.referrals
    # A hospital of another consortium sees nothing either; the office sees everything of its own.
    foreign = await new_world(stack, stub, uuid.uuid4().hex[:6].upper())
    await expect_error(grpc.StatusCode.NOT_FOUND, stub.GetReferral(api.GetReferralRequest(name=r.name),
                                                                   metadata=foreign.md(foreign.hospital)))
    office = await stub.GetReferral(api.GetReferralRequest(name=r.name), metadata=world.office)
    assert office.name == r.name
    await expect_error(grpc.StatusCode.NOT_FOUND, stub.GetReferral(api.GetReferralRequest(name=r.name),
                                                                   metadata=foreign.office))
    await expect_error(grpc.StatusCode.INVALID_ARGUMENT, stub.GetReferral(api.GetReferralRequest(name="bad/x"),
                                                                          metadata=other))
    await expect_error(grpc.StatusCode.UNAUTHENTICATED, stub.GetReferral(api.GetReferralRequest(name=r.name)))


async def test_watch_sees_only_own_changes(world, stub):
    watch = stub.WatchReferrals(api.WatchReferralsRequest(cursor="0"), metadata=world.md(world.clinics[1]))
    await world.create(clinic=world.clinics[0])
    own = await world.create(clinic=world.clinics[1])
    changes = await _take(watch, 1)
    assert changes[0].referral.name == own.name
    mine_again = await world.call("AcceptReferral", world.hospital, own.name)
    changes = await _take(watch, 1)
    assert changes[0].referral.state == mine_again.state
    watch.cancel()


async def test_watch_resumes_after_reconnect_without_gaps_or_repeats(world, stub):
    md = world.md(world.clinics[0])
    watch = stub.WatchReferrals(api.WatchReferralsRequest(), metadata=md)  # from now
    await asyncio.sleep(0.3)
    r = await world.create()
    r = await world.call("AcceptReferral", world.hospital, r.name)
    first = await _take(watch, 2)
    assert [c.change_type for c in first] == [api.CHANGE_TYPE_CREATED, api.CHANGE_TYPE_STATE_CHANGED]
    assert first[0].referral.state == rtypes.REFERRAL_STATE_SUBMITTED
    assert first[1].transition.to_state == rtypes.REFERRAL_STATE_ACCEPTED
    watch.cancel()
    # Changes while disconnected, some concurrent, from several callers.
    r2 = await world.create()
    await asyncio.gather(world.call("RecordArrival", world.hospital, r.name),
                         world.call("RejectReferral", world.hospital, r2.name, reason="无号源"))
    await world.call("CompleteReferral", world.hospital, r.name, completion=api.Completion(findings="好转"))
    resumed = stub.WatchReferrals(api.WatchReferralsRequest(cursor=first[-1].cursor), metadata=md)
    rest = await _take(resumed, 4)
    cursors = [int(c.cursor) for c in first + rest]
    assert cursors == sorted(set(cursors)), "a change repeated or out of order"
    assert sorted((c.referral.name, c.transition.to_state) for c in rest) == sorted([
        (r2.name, rtypes.REFERRAL_STATE_SUBMITTED), (r.name, rtypes.REFERRAL_STATE_ARRIVED),
        (r2.name, rtypes.REFERRAL_STATE_REJECTED), (r.name, rtypes.REFERRAL_STATE_COMPLETED)])
    # Nothing more is pending: the next change is the next one delivered.
    r3 = await world.create()
    (nxt,) = await _take(resumed, 1)
    assert nxt.referral.name == r3.name and int(nxt.cursor) > cursors[-1]
    resumed.cancel()


async def test_watch_rejects_bad_cursor(world, stub):
    watch = stub.WatchReferrals(api.WatchReferralsRequest(cursor="abc"), metadata=world.md(world.clinics[0]))
    await expect_error(grpc.StatusCode.INVALID_ARGUMENT, _take(watch, 1))


async def test_roles(world, stub):
    r = await world.create()
    # The consortium office reads and watches but does not act on referrals.
    await expect_error(grpc.StatusCode.PERMISSION_DENIED, stub.AcceptReferral(
        api.AcceptReferralRequest(name=r.name), metadata=world.office))
    await expect_error(grpc.StatusCode.PERMISSION_DENIED, stub.CreateReferral(world.request(), metadata=world.office))
    await world.call("AcceptReferral", world.hospital, r.name)
    arrived = await stub.RecordArrival(api.RecordArrivalRequest(name=r.name),
                                       metadata=world.stack.metadata(world.hospital, "bed_manager"))
    assert arrived.state == rtypes.REFERRAL_STATE_ARRIVED
    # Only the office administers, and only its own consortium.
    await expect_error(grpc.StatusCode.PERMISSION_DENIED, stub.CreateInstitution(api.CreateInstitutionRequest(
        parent=f"consortiums/{world.consortium}", institution_id=f"X{uuid.uuid4().hex[:6]}",
        institution=api.Institution(display_name="x", level=2, lead_hospital_id=world.hospital)),
        metadata=world.md(world.hospital)))
    # A caller whose institution is not a member gets nothing.
    await expect_error(grpc.StatusCode.PERMISSION_DENIED, stub.ListReferrals(
        api.ListReferralsRequest(), metadata=world.stack.metadata("NOBODY", "clinic_doctor")))


async def test_office_watches_the_whole_consortium(world, stub):
    watch = stub.WatchReferrals(api.WatchReferralsRequest(cursor="0"), metadata=world.office)
    a = await world.create(clinic=world.clinics[0])
    b = await world.create(clinic=world.clinics[1])
    changes = await _take(watch, 2)
    assert [c.referral.name for c in changes] == [a.name, b.name]
    watch.cancel()
