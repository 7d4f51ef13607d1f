"""Every read or change of a patient's data leaves an audit row with the call's request
id, and the audit table cannot be rewritten by the service's database user."""
from __future__ import annotations

import uuid

import asyncpg
import grpc
import pytest

from notify.v1 import notify_service_pb2 as npb
from referral.v1 import referral_service_pb2 as rpb
from scheduling.v1 import scheduling_service_pb2 as spb
from services.common.auth import Role
from tests.security.conftest import SCHEMAS
from tests.unit.referral import fakes


async def _audit_rows(pool, request_id: str) -> list:
    union = " UNION ALL ".join(f"SELECT '{s}' AS schema, action, patient_id, institution_id FROM {s}.audit_log "
                               f"WHERE request_id = $1" for s in SCHEMAS)
    return await pool.fetch(union, request_id)


async def test_every_patient_data_call_is_audited_once_with_its_request_id(services, flow):
    w, stack = flow.world, services.stack
    clinic, hospital = w.clinics[0], w.hospital
    mine = [r for r in flow.referrals if r.sending_institution_id == clinic]
    calls: list[tuple[str, str, object]] = []  # (request id, label, coroutine factory)

    def md(institution, role, rid):
        return stack.metadata(institution, role, request_id=rid)

    def add(label, make):
        rid = f"audit-{uuid.uuid4().hex}"
        calls.append((rid, label, make(rid)))

    for r in mine:
        rid_ = r.name.rpartition("/")[2]
        add("GetReferral", lambda rid, r=r: services.referral.GetReferral(
            rpb.GetReferralRequest(name=r.name), metadata=md(clinic, Role.CLINIC_DOCTOR, rid)))
        add("GetBooking", lambda rid, r=r: services.scheduling.GetBooking(
            spb.GetBookingRequest(name=f"bookings/{r.booking_id}"), metadata=md(hospital, Role.REFERRAL_DESK, rid)))
        add("ListNotifications", lambda rid, x=rid_: services.notify.ListNotifications(
            npb.ListNotificationsRequest(referral_id=x), metadata=md(clinic, Role.CLINIC_DOCTOR, rid)))
        add("SetContactPreferences", lambda rid, r=r, x=rid_: services.notify.SetContactPreferences(
            npb.SetContactPreferencesRequest(referral_id=x, preferences=npb.ContactPreferences(
                patient_id=r.patient.patient_id, channels=[npb.CHANNEL_SMS], consent=True)),
            metadata=md(clinic, Role.CLINIC_DOCTOR, rid)))
        add("SendStaffMessage", lambda rid, x=rid_: services.notify.SendStaffMessage(
            npb.SendStaffMessageRequest(referral_id=x, note="请按时就诊", request_id=rid),
            metadata=md(hospital, Role.REFERRAL_DESK, rid)))
    for n in flow.notifications[:2]:
        add("GetNotification", lambda rid, n=n: services.notify.GetNotification(
            npb.GetNotificationRequest(name=n), metadata=md(clinic, Role.CLINIC_DOCTOR, rid)))
    add("ListReferrals", lambda rid: services.referral.ListReferrals(
        rpb.ListReferralsRequest(page_size=50), metadata=md(clinic, Role.CLINIC_DOCTOR, rid)))
    add("CheckReferralRules", lambda rid: services.referral.CheckReferralRules(rpb.CheckReferralRulesRequest(
        id_number=fakes.id_number(), diagnosis_code="I63", direction=1, receiving_institution_id=hospital),
        metadata=md(clinic, Role.CLINIC_DOCTOR, rid)))
    add("UpdateChronicCareStatus", lambda rid: services.referral.UpdateChronicCareStatus(
        rpb.UpdateChronicCareStatusRequest(patient=rpb.PatientInput(
            display_name="李测明", id_number=fakes.id_number(), mobile=fakes.mobile()), condition_code="I10",
            colour=1, reason="血压平稳"), metadata=md(clinic, Role.CLINIC_DOCTOR, rid)))
    # A change: a new referral, then cancelled by its sender.
    created_rid = f"audit-{uuid.uuid4().hex}"
    created = await services.referral.CreateReferral(w.request(clinic=clinic),
                                                     metadata=md(clinic, Role.CLINIC_DOCTOR, created_rid))
    calls.append((created_rid, "CreateReferral", None))
    add("CancelReferral", lambda rid: services.referral.CancelReferral(
        rpb.CancelReferralRequest(name=created.name, reason="患者改期"), metadata=md(clinic, Role.CLINIC_DOCTOR, rid)))

    failed = []
    for rid, label, call in calls:
        if call is None:
            continue
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            failed.append((label, exc.code().name, exc.details()))
    assert not failed, failed
    # A watch is one call however long it runs: its request id is on every batch it sent.
    watch_rid = f"audit-{uuid.uuid4().hex}"
    stream = services.referral.WatchReferrals(rpb.WatchReferralsRequest(cursor="0"),
                                              metadata=md(clinic, Role.CLINIC_DOCTOR, watch_rid))
    async for _ in stream:
        break
    stream.cancel()
    calls.append((watch_rid, "WatchReferrals", None))

    audited, missing, per_call = 0, [], {}
    for rid, label, _ in calls:
        rows = await _audit_rows(services.db, rid)
        if rows and all(r["patient_id"] for r in rows):
            audited += 1
        else:
            missing.append((label, len(rows)))
        per_call.setdefault(label, []).append(len(rows))
    ratio = audited / len(calls)
    print(f"\naudit: {len(calls)} patient-data calls over {len(per_call)} methods, rows per call "
          f"{ {k: v for k, v in per_call.items()} }; audited calls / calls = {ratio:.3f}")
    assert ratio == 1.0, missing
    # Single-patient calls leave exactly one row (lists one per patient returned).
    singles = {"GetReferral", "GetBooking", "SetContactPreferences", "SendStaffMessage", "GetNotification",
               "CheckReferralRules", "UpdateChronicCareStatus", "CreateReferral", "CancelReferral"}
    assert all(n == 1 for label in singles & per_call.keys() for n in per_call[label]), per_call


async def test_a_refused_call_leaves_no_audit_row_and_reveals_nothing(services, flow, foreign):
    rid = f"audit-{uuid.uuid4().hex}"
    with pytest.raises(grpc.aio.AioRpcError):
        await services.referral.GetReferral(rpb.GetReferralRequest(name=flow.referrals[0].name),
                                            metadata=services.stack.metadata(foreign.clinics[0], Role.CLINIC_DOCTOR,
                                                                             request_id=rid))
    assert await _audit_rows(services.db, rid) == []


async def test_the_service_database_user_cannot_rewrite_the_audit_log(services, flow):
    """A cluster runs each service as a role that owns nothing and holds INSERT/SELECT on
    its audit log; such a role, and the owner itself (trigger), cannot change a row."""
    stack, admin = services.stack, services.db
    role = f"svc_audit_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
    refused: dict[str, str] = {}
    try:
        for schema in SCHEMAS:
            await admin.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
            await admin.execute(f"GRANT INSERT, SELECT ON {schema}.audit_log TO {role}")
            await admin.execute(f"GRANT USAGE ON SEQUENCE {schema}.audit_log_id_seq TO {role}")
        url = stack.database_url.replace("postgresql://postgres@", f"postgresql://{role}@")
        conn = await asyncpg.connect(url)
        try:
            for schema in SCHEMAS:
                await conn.execute(f"INSERT INTO {schema}.audit_log (subject, institution_id, role, action, resource, "
                                   "patient_id, request_id) VALUES ('t', 't', 'service', 'probe', 'x', NULL, 'probe')")
                for statement in (f"UPDATE {schema}.audit_log SET action = 'erased'",
                                  f"DELETE FROM {schema}.audit_log", f"TRUNCATE {schema}.audit_log"):
                    try:
                        await conn.execute(statement)
                        refused[statement] = "ALLOWED"
                    except asyncpg.InsufficientPrivilegeError as exc:
                        refused[statement] = type(exc).__name__
        finally:
            await conn.close()
        for schema in SCHEMAS:  # the owner (here the superuser) is stopped by the trigger
            for statement in (f"UPDATE {schema}.audit_log SET action = 'erased'", f"DELETE FROM {schema}.audit_log",
                              f"TRUNCATE {schema}.audit_log"):
                try:
                    await admin.execute(statement)
                    refused[f"owner: {statement}"] = "ALLOWED"
                except asyncpg.InsufficientPrivilegeError as exc:
                    refused[f"owner: {statement}"] = type(exc).__name__
    finally:
        for schema in SCHEMAS:
            await admin.execute(f"REVOKE ALL ON {schema}.audit_log FROM {role}")
            await admin.execute(f"REVOKE ALL ON SEQUENCE {schema}.audit_log_id_seq FROM {role}")
            await admin.execute(f"REVOKE ALL ON SCHEMA {schema} FROM {role}")
        await admin.execute(f"DROP ROLE {role}")
    allowed = [k for k, v in refused.items() if v == "ALLOWED"]
    print(f"\naudit log rewrite attempts: {len(refused)} (service role and owner, 3 schemas); allowed = {len(allowed)}")
    assert not allowed, allowed
