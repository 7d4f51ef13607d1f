"""Every transition through the API: legal ones move the state, illegal ones get
FAILED_PRECONDITION with the reason; plus concurrency and idempotent create."""
import asyncio
import uuid

import grpc

from referral.v1 import referral_service_pb2 as api, types_pb2 as rtypes
from services.referral.domain.model import TRANSITIONS, State

from .world import expect_error

S = rtypes

# How to reach each state through the API alone (scheduling-driven states are in
# test_scheduling_events.py).
PATHS = {
    State.DRAFT: [],
    State.SUBMITTED: ["SubmitReferral"],
    State.RETURNED: ["SubmitReferral", "ReturnReferral"],
    State.ACCEPTED: ["SubmitReferral", "AcceptReferral"],
    State.REJECTED: ["SubmitReferral", "RejectReferral"],
    State.ARRIVED: ["SubmitReferral", "AcceptReferral", "RecordArrival"],
    State.COMPLETED: ["SubmitReferral", "AcceptReferral", "RecordArrival", "CompleteReferral"],
    State.CANCELLED: ["CancelReferral"],
    State.NO_SHOW: ["SubmitReferral", "AcceptReferral", "RecordNoShow"],
}
# method -> (domain action, acting side)
METHODS = {
    "SubmitReferral": ("submit", "sender"), "AcceptReferral": ("accept", "receiver"),
    "RejectReferral": ("reject", "receiver"), "ReturnReferral": ("return", "receiver"),
    "ResubmitReferral": ("resubmit", "sender"), "CancelReferral": ("cancel", "sender"),
    "WithdrawConsent": ("withdraw_consent", "sender"), "RecordArrival": ("arrive", "receiver"),
    "RecordNoShow": ("no_show", "receiver"), "CompleteReferral": ("complete", "receiver"),
}
FIELDS = {"RejectReferral": {"reason": "床位已满"}, "ReturnReferral": {"reason": "请补充心电图"},
          "CancelReferral": {"reason": "患者要求"}, "WithdrawConsent": {"reason": "患者拒绝"},
          "ResubmitReferral": {"additional_information": "已补充"},
          "CompleteReferral": {"completion": api.Completion(findings="好转")}}


async def _act(world, referral, method):
    who = world.clinics[0] if METHODS[method][1] == "sender" else world.hospital
    return await world.call(method, who, referral.name, **FIELDS.get(method, {}))


async def _in_state(world, state):
    r = await world.create(draft=True)
    for method in PATHS[state]:
        r = await _act(world, r, method)
    assert r.state == int(state)
    return r


async def test_every_transition_legal_or_refused(world):
    checked = 0
    for state in PATHS:
        for method, (action, side) in METHODS.items():
            sources, target, _ = TRANSITIONS[action]
            r = await _in_state(world, state)
            if side == "receiver" and not r.HasField("submit_time"):
                # Never sent (a draft, or one cancelled as a draft): not the receiver's to see.
                await expect_error(grpc.StatusCode.NOT_FOUND, _act(world, r, method))
            elif state in sources:
                after = await _act(world, r, method)
                assert after.state == int(target), (state, method)
                last = after.history[-1]
                assert (last.from_state, last.to_state) == (int(state), int(target))
                assert last.actor and last.actor_institution_id and last.transition_time.seconds
            else:
                error = await expect_error(grpc.StatusCode.FAILED_PRECONDITION, _act(world, r, method))
                assert "不能执行" in error.details()
            checked += 1
    assert checked == len(PATHS) * len(METHODS)


async def test_wrong_side_and_missing_reason(world):
    r = await world.create()
    # The sender cannot accept its own referral; the receiver cannot cancel it.
    await expect_error(grpc.StatusCode.PERMISSION_DENIED, world.call("AcceptReferral", world.clinics[0], r.name))
    await expect_error(grpc.StatusCode.PERMISSION_DENIED,
                       world.call("CancelReferral", world.hospital, r.name, reason="x"))
    error = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, world.call("RejectReferral", world.hospital, r.name))
    assert "reason" in error.details()
    again = await world.stub.GetReferral(api.GetReferralRequest(name=r.name), metadata=world.md(world.hospital))
    assert again.state == S.REFERRAL_STATE_SUBMITTED and len(again.history) == 2


async def test_return_and_resubmit_keeps_history(world):
    r = await world.create()
    r = await world.call("ReturnReferral", world.hospital, r.name, reason="请补充血常规")
    r = await world.call("ResubmitReferral", world.clinics[0], r.name, additional_information="血常规已附")
    assert r.state == S.REFERRAL_STATE_SUBMITTED and r.additional_information == "血常规已附"
    assert [h.to_state for h in r.history] == [1, 2, 3, 2]
    assert r.history[2].reason == "请补充血常规"


async def test_consent_required_to_submit_and_withdrawal_cancels(world):
    await expect_error(grpc.StatusCode.FAILED_PRECONDITION, world.create(consent=False))
    draft = await world.create(draft=True, consent=False)
    error = await expect_error(grpc.StatusCode.FAILED_PRECONDITION,
                               world.call("SubmitReferral", world.clinics[0], draft.name))
    assert "知情同意" in error.details()
    submitted = await world.call("SubmitReferral", world.clinics[0], draft.name,
                                 consent=api.Consent(given=True, method="口头"))
    assert submitted.consent.given and submitted.consent.recorded_by and submitted.consent.record_time.seconds
    accepted = await world.call("AcceptReferral", world.hospital, draft.name)
    # The patient may tell the hospital as well as the clinic.
    withdrawn = await world.call("WithdrawConsent", world.hospital, accepted.name, reason="患者决定不转诊")
    assert withdrawn.state == S.REFERRAL_STATE_CANCELLED and withdrawn.consent.withdraw_time.seconds


async def test_two_concurrent_transitions_exactly_one_wins(world):
    for _ in range(3):
        r = await world.create()
        results = await asyncio.gather(
            world.call("AcceptReferral", world.hospital, r.name),
            world.call("RejectReferral", world.hospital, r.name, reason="无床位"),
            world.call("ReturnReferral", world.hospital, r.name, reason="补充材料"),
            return_exceptions=True)
        wins = [x for x in results if isinstance(x, api.Referral)]
        losses = [x for x in results if isinstance(x, grpc.aio.AioRpcError)]
        assert len(wins) == 1, results
        assert {e.code() for e in losses} <= {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED}
        final = await world.stub.GetReferral(api.GetReferralRequest(name=r.name), metadata=world.md(world.hospital))
        assert final.state == wins[0].state and len(final.history) == 3


async def test_create_is_idempotent_on_request_id(world, referral_app):
    request = world.request()
    md = world.md(world.clinics[0])
    first, second = await asyncio.gather(world.stub.CreateReferral(request, metadata=md),
                                         world.stub.CreateReferral(request, metadata=md))
    third = await world.stub.CreateReferral(request, metadata=md)
    assert first.name == second.name == third.name
    pool = referral_app.ctx.pool
    referral_id = first.name.split("/")[1]
    assert await pool.fetchval("SELECT count(*) FROM referrals WHERE request_id = $1", request.request_id) == 1
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE aggregate_id = $1", referral_id) == 1
    # The key is scoped to the institution: another clinic's same key is another referral.
    other = await world.stub.CreateReferral(request, metadata=world.md(world.clinics[1]))
    assert other.name != first.name


async def test_list_filters_and_pages(world):
    names = [(await world.create(clinic=world.clinics[0])).name for _ in range(5)]
    urgent = await world.stub.CreateReferral(world.request(), metadata=world.md(world.clinics[1]))
    seen, token = [], ""
    while True:
        page = await world.stub.ListReferrals(api.ListReferralsRequest(
            page_size=2, page_token=token, sending_institution_id=world.clinics[0]), metadata=world.md(world.hospital))
        seen += [r.name for r in page.referrals]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(names) and len(seen) == len(set(seen))
    by_state = await world.stub.ListReferrals(api.ListReferralsRequest(
        states=[S.REFERRAL_STATE_SUBMITTED], direction=S.DIRECTION_UP, department="neurology", urgency=3),
        metadata=world.md(world.hospital))
    assert {r.name for r in by_state.referrals} == set(names) | {urgent.name}
    await expect_error(grpc.StatusCode.INVALID_ARGUMENT, world.stub.ListReferrals(
        api.ListReferralsRequest(page_token=uuid.uuid4().hex), metadata=world.md(world.hospital)))
