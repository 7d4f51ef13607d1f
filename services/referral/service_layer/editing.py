"""Use cases beside the main lifecycle: editing a draft or returned referral
(UpdateReferral), rebooking after a no-show (RebookReferral) and the audited reveal
of a patient's full identifiers (RevealPatientContact)."""
from __future__ import annotations

from referral.v1 import referral_service_pb2 as api
from services.common import audit
from services.common.auth import Caller, Role
from services.common.errors import FieldViolation, InvalidArgument
from services.referral.adapters import mapping, repository as repo
from services.referral.domain.model import Actor, Referral
from services.referral.service_layer.services import WRITE_ROLES, ReferralService, audit_referral

# Staff of the sending or receiving institution; not a consortium office, not a bed manager.
REVEAL_ROLES = (Role.CLINIC_DOCTOR, Role.REFERRAL_DESK)


async def update(svc: ReferralService, caller: Caller, referral_id: str, changes: dict) -> Referral:
    caller.require(*WRITE_ROLES)
    now = svc.clock()
    async with svc.pool.acquire() as conn, conn.transaction():
        referral = await svc._load(conn, referral_id, caller, for_update=True)
        referral.edit(Actor(caller.subject, caller.institution_id), now)
        for attribute, value in changes.items():
            setattr(referral, attribute, value)
        # Result recognition and billing terms follow the new needs and results.
        await svc._refresh_rules(conn, referral)
        await repo.save(conn, referral)
        change = api.WatchReferralsResponse(change_type=api.CHANGE_TYPE_UPDATED,
                                            referral=mapping.referral_proto(referral, now.date()))
        await repo.append_change(conn, referral, change.SerializeToString())
        await audit_referral(conn, caller, referral, "UpdateReferral")
    return referral


async def rebook(svc: ReferralService, caller: Caller, referral_id: str, reason: str) -> Referral:
    return await svc._transition(caller, referral_id, lambda r, a, now: r.rebook(a, now, reason.strip()))


async def reveal_contact(svc: ReferralService, caller: Caller, referral_id: str, reason: str) -> api.PatientContact:
    caller.require(*REVEAL_ROLES)
    reason = reason.strip()
    if not reason:
        raise InvalidArgument(FieldViolation("reason", "查看完整身份信息必须填写原因"))
    if len(reason) > 500:
        raise InvalidArgument(FieldViolation("reason", "不能超过500个字符"))
    async with svc.pool.acquire() as conn, conn.transaction():
        referral = await svc._load(conn, referral_id, caller)
        p = referral.patient
        contact = api.PatientContact(
            referral=mapping.referral_name(referral.id), patient_id=p.patient_id,
            display_name=svc.pii.decrypt(p.name_ciphertext, "referral.name"),
            id_number=svc.pii.decrypt(p.id_number_ciphertext, "referral.id_number"),
            mobile=svc.pii.decrypt(p.mobile_ciphertext, "referral.mobile"))
        # Written before the identifiers leave, in the same transaction as the read.
        await audit.record_with_reason(conn, caller, "RevealPatientContact", mapping.referral_name(referral.id),
                                       p.patient_id, reason)
    return contact
