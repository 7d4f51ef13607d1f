"""Validation and scope: bad input changes nothing; others' resources do not exist."""
import grpc
import pytest

from scheduling.v1 import scheduling_service_pb2 as pb
from services.common.auth import Role
from services.scheduling.service_layer import jobs
from tests.support.rpc_errors import field_violations

from .conftest import session, timedelta, today


def _violations(err) -> set[str]:
    return {f for f, _ in field_violations(err)}


async def test_bad_sessions_are_rejected_whole(stack, app, stub, hospital):
    desk = stack.metadata(hospital, Role.REFERRAL_DESK)
    good = session(f"{hospital}-OK", today() + timedelta(days=1))
    bad = session(f"{hospital}-BAD", today() + timedelta(days=1), start="11:00", end="10:00", slot=2)
    bad.reserved_places = 2  # below the 30 % floor of 20
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PublishSessions(pb.PublishSessionsRequest(hospital_id=hospital, sessions=[good, bad]), metadata=desk)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {"sessions[1].slot_minutes", "sessions[1].reserved_places"} <= _violations(err.value)
    async with app.ctx.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sessions WHERE hospital_id = $1", hospital) == 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SetReservationPolicy(pb.SetReservationPolicyRequest(policy=pb.ReservationPolicy(
            hospital_id=hospital, resource_type=pb.RESOURCE_TYPE_OUTPATIENT, reserved_share=0.1)), metadata=desk)
    assert "policy.reserved_share" in _violations(err.value)
    # Released 48 h ahead, reserved beds are never inside an urgent referral's 48 hours.
    bed_policy = pb.ReservationPolicy(hospital_id=hospital, resource_type=pb.RESOURCE_TYPE_BED, reserved_share=0.3,
                                      release_hours=48)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SetReservationPolicy(pb.SetReservationPolicyRequest(policy=bed_policy), metadata=desk)
    assert _violations(err.value) == {"policy.release_hours"} and "加急" in err.value.details()
    bed_policy.release_hours = 47
    await stub.SetReservationPolicy(pb.SetReservationPolicyRequest(policy=bed_policy), metadata=desk)
    # One stored before the rule (an upgrade) is still applied, and named at start-up.
    async with app.ctx.pool.acquire() as conn:
        await conn.execute("INSERT INTO reservation_policies (hospital_id, resource_type, reserved_share, "
                           "expert_floor_share, release_hours, early_release_days, clinic_quotas) "
                           "VALUES ($1, 'exam', 0.3, 0, 72, 14, '{}')", hospital)
    late = [(r["resource_type"], r["release_hours"]) for r in await jobs.policies_releasing_too_early(app.ctx.pool)
            if r["hospital_id"] == hospital]
    assert late == [("exam", 72)]


async def test_scope_and_roles(stack, app, stub, hospital):
    request = pb.PublishSessionsRequest(hospital_id=hospital, sessions=[session(f"{hospital}-S", today() + timedelta(days=1), reserved=0)])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PublishSessions(request, metadata=stack.metadata("OTHER", Role.REFERRAL_DESK))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PublishSessions(request, metadata=stack.metadata("CLINIC01", Role.CLINIC_DOCTOR))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetBooking(pb.GetBookingRequest(name="bookings/" + "0" * 32),
                              metadata=stack.metadata(hospital, Role.REFERRAL_DESK))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # Republishing the same sessions is harmless.
    desk = stack.metadata(hospital, Role.REFERRAL_DESK)
    one = await stub.PublishSessions(request, metadata=desk)
    two = await stub.PublishSessions(request, metadata=desk)
    assert one == two and one.reserved_places == 6


async def test_a_room_id_another_hospital_has_is_refused(stack, app, stub, hospital):
    """Rooms belong to a hospital through their ward: another hospital's upsert must not
    move one into its own ward (ON CONFLICT would)."""
    other = f"{hospital}X"

    def ward(owner: str, bed: str) -> pb.UpsertBedsRequest:
        return pb.UpsertBedsRequest(hospital_id=owner, wards=[pb.Ward(
            ward_id=f"{owner}-W1", department="cardiology", rooms=[pb.WardRoom(
                room_id=f"{hospital}-R301", capacity=2, gender_policy=pb.GENDER_POLICY_ANY,
                beds=[pb.BedSpec(bed_id=bed)])])])

    await stub.UpsertBeds(ward(hospital, f"{hospital}-B1"), metadata=stack.metadata(hospital, Role.BED_MANAGER))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpsertBeds(ward(other, f"{other}-B1"), metadata=stack.metadata(other, Role.BED_MANAGER))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(err.value) == {"wards[0].rooms[0].room_id"} and "该编号已被其他医院使用" in err.value.details()
    async with app.ctx.pool.acquire() as conn:
        assert await conn.fetchval("SELECT ward_id FROM rooms WHERE room_id = $1", f"{hospital}-R301") == \
            f"{hospital}-W1"
        assert await conn.fetchval("SELECT count(*) FROM wards WHERE hospital_id = $1", other) == 0
