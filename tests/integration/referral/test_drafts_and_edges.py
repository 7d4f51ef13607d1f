"""A draft is its sender's alone on every read path; numbers out of a column's range are
the caller's error (INVALID_ARGUMENT), not ours; a down-referral never waits for
scheduling, so it never breaches the scheduling SLA."""
import asyncio
from datetime import datetime, timezone

import grpc

from referral.v1 import referral_service_pb2 as api, types_pb2 as rtypes
from services.referral.service_layer.services import ReferralService

from .test_rules import _violations
from .world import expect_error


async def _first(call, timeout=10.0):
    try:
        async with asyncio.timeout(timeout):
            async for change in call:
                return change
    finally:
        call.cancel()


async def test_a_draft_is_its_senders_alone_until_submitted(world):
    clinic, hospital, stub = world.clinics[0], world.hospital, world.stub
    draft = await world.create(draft=True, consent=False)
    await stub.UpdateReferral(api.UpdateReferralRequest(referral=api.Referral(
        name=draft.name, additional_information="补充：既往史")), metadata=world.md(clinic))
    abandoned = await world.create(draft=True)
    await world.call("CancelReferral", clinic, abandoned.name, reason="患者不愿转诊")
    for name in (draft.name, abandoned.name):
        for md in (world.md(hospital), world.office):
            await expect_error(grpc.StatusCode.NOT_FOUND, stub.GetReferral(api.GetReferralRequest(name=name),
                                                                           metadata=md))
            listed = await stub.ListReferrals(api.ListReferralsRequest(), metadata=md)
            assert name not in {r.name for r in listed.referrals}
        await expect_error(grpc.StatusCode.NOT_FOUND, stub.RevealPatientContact(
            api.RevealPatientContactRequest(name=name, reason="电话联系患者"), metadata=world.md(hospital)))
        await expect_error(grpc.StatusCode.NOT_FOUND, world.call("AcceptReferral", hospital, name))
    # The sender still sees and reveals its own draft.
    assert (await stub.GetReferral(api.GetReferralRequest(name=draft.name), metadata=world.md(clinic))).name
    await stub.RevealPatientContact(api.RevealPatientContactRequest(name=draft.name, reason="核对身份"),
                                    metadata=world.md(clinic))

    submitted = await world.call("SubmitReferral", clinic, draft.name, consent=api.Consent(given=True, method="签字"))
    # From the start of the history, the receiver's first change is the submission.
    for md in (world.md(hospital), world.office):
        first = await _first(stub.WatchReferrals(api.WatchReferralsRequest(cursor="0"), metadata=md))
        assert (first.referral.name, first.transition.to_state) == (draft.name, rtypes.REFERRAL_STATE_SUBMITTED)
    seen = await stub.GetReferral(api.GetReferralRequest(name=draft.name), metadata=world.md(hospital))
    assert seen.state == submitted.state == rtypes.REFERRAL_STATE_SUBMITTED
    listed = await stub.ListReferrals(api.ListReferralsRequest(), metadata=world.md(hospital))
    assert [r.name for r in listed.referrals] == [draft.name]


async def test_numbers_out_of_range_are_invalid_arguments(world):
    stub, parent = world.stub, f"consortiums/{world.consortium}"
    for size in (-1, -5):
        error = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, stub.ListInstitutions(
            api.ListInstitutionsRequest(parent=parent, page_size=size), metadata=world.office))
        assert set(_violations(error)) == {"page_size"}
    for cursor in ("99999999999999999999", "²", "-1"):
        error = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, _first(stub.WatchReferrals(
            api.WatchReferralsRequest(cursor=cursor), metadata=world.md(world.clinics[0]))))
        assert set(_violations(error)) == {"cursor"}
    for version in ("3000000000", "²"):
        error = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, stub.GetDiseaseCatalogue(
            api.GetDiseaseCatalogueRequest(name=f"{parent}/diseaseCatalogues/{version}"), metadata=world.office))
        assert set(_violations(error)) == {"name"}
    # The largest cursor and version that fit still work.
    await expect_error(grpc.StatusCode.NOT_FOUND, stub.GetDiseaseCatalogue(
        api.GetDiseaseCatalogueRequest(name=f"{parent}/diseaseCatalogues/2147483647"), metadata=world.office))
    page = await stub.ListInstitutions(api.ListInstitutionsRequest(parent=parent, page_size=1), metadata=world.office)
    assert len(page.institutions) == 1 and page.next_page_token


async def test_a_down_referral_accepted_long_ago_is_no_scheduling_breach(world, referral_app):
    clinic, hospital = world.clinics[0], world.hospital
    down = await world.create(clinic=hospital, receiver=clinic, direction=rtypes.DIRECTION_DOWN)
    await world.call("AcceptReferral", clinic, down.name)
    up = await world.create()
    await world.call("AcceptReferral", hospital, up.name)
    ids = [r.name.split("/")[1] for r in (down, up)]
    pool = referral_app.ctx.pool
    # Both far past the routine scheduling target (168 h) since their acceptance.
    await pool.execute("UPDATE referral_transitions SET at = now() - interval '30 days' "
                       "WHERE referral_id = ANY($1::text[]) AND to_state = 4", ids)
    await ReferralService(pool, referral_app.ctx.pii, clock=lambda: datetime.now(timezone.utc)).check_sla()
    rows = await pool.fetch("SELECT referral_id, stage FROM sla_breaches WHERE referral_id = ANY($1::text[])", ids)
    assert [(r["referral_id"], r["stage"]) for r in rows] == [(ids[1], "scheduling")]
