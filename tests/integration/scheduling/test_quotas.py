"""Clinic quotas as a hard limit: routine referrals over the quota wait, green channel goes."""
from scheduling.v1 import scheduling_service_pb2 as pb
from services.common.auth import Role

from .conftest import referral, session, timedelta, today


async def test_a_hard_quota_waitlists_routine_referrals_over_it(stack, app, stub, hospital):
    desk = stack.metadata(hospital, Role.REFERRAL_DESK)
    await stub.SetReservationPolicy(pb.SetReservationPolicyRequest(policy=pb.ReservationPolicy(
        hospital_id=hospital, resource_type=pb.RESOURCE_TYPE_OUTPATIENT, reserved_share=0.5, release_hours=24,
        clinic_quotas=[pb.ClinicQuota(clinic_id="CLINIC01", places=1)], quotas_hard=True)), metadata=desk)
    await stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[
        session(f"{hospital}-S1", today() + timedelta(days=2), overflow=2)]), metadata=desk)
    service = stack.metadata("scheduler", Role.SERVICE)

    async def allocate(snap):
        return await stub.AllocateReferral(pb.AllocateReferralRequest(referral=snap), metadata=service)

    assert not (await allocate(referral(hospital))).waitlisted
    over = await allocate(referral(hospital))
    assert over.waitlisted and over.reason_code == "QUOTA_EXHAUSTED"
    green = referral(hospital)
    green.green_channel = True
    assert not (await allocate(green)).waitlisted
    assert not (await allocate(referral(hospital, clinic="CLINIC02"))).waitlisted  # no quota: not limited
