"""A caller sees only its own: every rpc of every service, called by every role of a
foreign consortium naming the attacked consortium's resources, returns no data; a clinic
cannot read another clinic's referrals, bookings or notifications."""
from __future__ import annotations

import grpc

from notify.v1 import notify_service_pb2 as npb
from referral.v1 import referral_service_pb2 as rpb
from scheduling.v1 import scheduling_service_pb2 as spb
from services.common.auth import Role
from tests.security.conftest import eventually
from tests.security.rpc import all_methods, fill, invoke, request_class

# Nothing is allowed by name any more: scheduling and notify learn consortium membership
# from the referral service's events (referral.v1.InstitutionUpserted) and serve
# per-hospital aggregates to the offices and clinics of the hospital's own consortium only.
AGGREGATE_BY_DESIGN: set[tuple[str, str]] = set()


async def membership_arrived(services, *worlds) -> None:
    """Both consortiums' membership reached scheduling and notify (so every refusal below
    is a decision on known membership, not on a copy that has not arrived yet)."""
    ids = [i for w in worlds for i in (w.hospital, *w.clinics)]

    async def known():
        counts = [await services.db.fetchval(
            f"SELECT count(*) FROM {schema}.memberships WHERE institution_id = ANY($1::text[])", ids)
            for schema in ("scheduling", "notify")]
        return all(c == len(ids) for c in counts)
    assert await eventually(known), "membership events did not reach scheduling and notify"


def _name_for(method: str, flow) -> str:
    w, victim = flow.world, flow.referrals[0]
    if method in ("GetBooking", "Reschedule", "CancelBooking"):
        return f"bookings/{flow.bookings[0]}"
    if method == "GetNotification":
        return flow.notifications[0] if flow.notifications else "notifications/00000000-0000-0000-0000-000000000000"
    if method == "GetConsortium":
        return f"consortiums/{w.consortium}"
    if method == "GetInstitution":
        return f"consortiums/{w.consortium}/institutions/{w.hospital}"
    if method == "GetDiseaseCatalogue":
        return f"consortiums/{w.consortium}/diseaseCatalogues/latest"
    return victim.name


def _victim_strings(flow) -> set[str]:
    out = set()
    for r in flow.referrals:
        out |= {r.name.rpartition("/")[2], r.patient.patient_id, r.booking_id}
    return out | {n.rpartition("/")[2] for n in flow.notifications}


async def test_every_rpc_refuses_every_foreign_role(services, flow, foreign):
    w, victim = flow.world, flow.referrals[0]
    callers = {Role.CLINIC_DOCTOR: foreign.clinics[0], Role.REFERRAL_DESK: foreign.hospital,
               Role.BED_MANAGER: foreign.hospital, Role.CONSORTIUM_OFFICE: foreign.consortium}
    secrets = _victim_strings(flow)
    await membership_arrived(services, w, foreign)
    calls, successes, leaks, codes = 0, [], [], {}
    for svc, method in all_methods():
        request = request_class(method)()
        fill(request, {"name": _name_for(method.name, flow), "referral_id": victim.name.rpartition("/")[2],
                       "hospital_id": w.hospital, "patient_id": victim.patient.patient_id,
                       "parent": f"consortiums/{w.consortium}", "consortium": f"consortiums/{w.consortium}",
                       "consortium_id": w.consortium, "receiving_institution_id": w.hospital,
                       "sending_institution_id": w.clinics[0], "booking_id": flow.bookings[0], "cursor": "0"})
        for role, institution in callers.items():
            outcome = await invoke(services, svc, method, request, services.stack.metadata(institution, role))
            calls += 1
            codes[outcome.code.name] = codes.get(outcome.code.name, 0) + 1
            key = (f"{svc}.{method.name}", role.value)
            if not outcome.ok:
                continue
            payload = b"".join(r.SerializeToString() for r in outcome.responses)
            if not payload:
                continue  # an empty list or a silent stream: nothing was disclosed
            if key not in AGGREGATE_BY_DESIGN or any(s.encode() in payload for s in secrets if s):
                leaks.append((*key, [str(r)[:200] for r in outcome.responses]))
            successes.append(key)
    print(f"\nauthorization matrix: {len(all_methods())} rpcs x {len(callers)} foreign roles = {calls} calls; "
          f"codes {codes}; aggregate-only successes {sorted(successes)}; leaks = {len(leaks)}")
    assert not leaks, "\n".join(map(str, leaks))


async def test_own_consortium_reads_its_hospitals_aggregates(services, flow, foreign):
    """The positive side of the matrix: membership arrives by events, end to end."""
    w, stack = flow.world, services.stack
    await membership_arrived(services, w, foreign)
    office = stack.metadata(w.consortium, Role.CONSORTIUM_OFFICE)
    util = await services.scheduling.GetUtilization(spb.GetUtilizationRequest(hospital_id=w.hospital),
                                                    metadata=office)
    assert util.pools
    for md in (office, stack.metadata(w.clinics[1], Role.CLINIC_DOCTOR)):
        listed = await services.scheduling.ListAvailability(spb.ListAvailabilityRequest(hospital_id=w.hospital),
                                                            metadata=md)
        assert listed.slots
    stats = await services.notify.GetDeliveryStats(npb.GetDeliveryStatsRequest(hospital_id=w.hospital),
                                                   metadata=office)
    assert stats == await services.notify.GetDeliveryStats(npb.GetDeliveryStatsRequest(), metadata=office)
    # The foreign office's consortium-wide statistics hold none of the attacked hospital's.
    theirs = await services.notify.GetDeliveryStats(npb.GetDeliveryStatsRequest(), metadata=stack.metadata(
        foreign.consortium, Role.CONSORTIUM_OFFICE))
    assert theirs.notifications == 0


async def test_a_clinic_cannot_read_another_clinics_patients(services, flow, foreign):
    w, stack = flow.world, services.stack
    mine = [r for r in flow.referrals if r.sending_institution_id == w.clinics[0]]
    theirs = {r.name for r in flow.referrals} - {r.name for r in mine}
    attackers = {"same-consortium clinic": stack.metadata(w.clinics[1], Role.CLINIC_DOCTOR),
                 "foreign clinic": stack.metadata(foreign.clinics[0], Role.CLINIC_DOCTOR),
                 "foreign hospital desk": stack.metadata(foreign.hospital, Role.REFERRAL_DESK)}
    tries, leaks = 0, []
    for who, md in attackers.items():
        allowed = theirs if who == "same-consortium clinic" else set()
        for r in mine:
            rid = r.name.rpartition("/")[2]
            probes = [
                ("GetReferral", services.referral.GetReferral(rpb.GetReferralRequest(name=r.name), metadata=md)),
                ("GetBooking", services.scheduling.GetBooking(spb.GetBookingRequest(name=f"bookings/{r.booking_id}"),
                                                              metadata=md)),
                ("ListNotifications/referral", services.notify.ListNotifications(
                    npb.ListNotificationsRequest(referral_id=rid), metadata=md)),
                ("ListNotifications/patient", services.notify.ListNotifications(
                    npb.ListNotificationsRequest(patient_id=r.patient.patient_id), metadata=md)),
            ]
            probes += [("GetNotification", services.notify.GetNotification(
                npb.GetNotificationRequest(name=n), metadata=md)) for n in flow.notifications]
            for label, call in probes:
                tries += 1
                try:
                    reply = await call
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED), exc
                    continue
                if label.startswith("ListNotifications") and not reply.notifications:
                    continue
                if label == "GetNotification" and reply.referral_id not in {
                        x.name.rpartition("/")[2] for x in flow.referrals if x.name in allowed}:
                    leaks.append((who, label, reply.name))
                elif label != "GetNotification":
                    leaks.append((who, label, str(reply)[:120]))
        listed = await services.referral.ListReferrals(rpb.ListReferralsRequest(page_size=100), metadata=md)
        watched = []
        call = services.referral.WatchReferrals(rpb.WatchReferralsRequest(cursor="0"), metadata=md)
        try:
            async with _deadline(2.0):
                async for change in call:
                    watched.append(change.referral.name)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND), exc
        except TimeoutError:
            call.cancel()
        tries += 2
        seen = {x.name for x in listed.referrals} | set(watched)
        leaks += [(who, "List/Watch", name) for name in seen - allowed if name in {r.name for r in mine}
                  or name not in {r.name for r in flow.referrals}]
    print(f"\ncross-institution: {tries} reads by {len(attackers)} attackers of {len(mine)} referrals "
          f"(get, list, watch, booking, notifications): leaks = {len(leaks)}")
    assert not leaks, leaks


class _deadline:
    def __init__(self, seconds: float) -> None:
        import asyncio
        self._timeout = asyncio.timeout(seconds)

    async def __aenter__(self):
        return await self._timeout.__aenter__()

    async def __aexit__(self, *exc):
        return await self._timeout.__aexit__(*exc)
