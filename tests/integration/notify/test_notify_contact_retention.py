"""Notify forgets how to reach a patient who has had nothing from it for the retention."""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc

from notify.v1 import notify_service_pb2 as pb
from notify.v1 import notify_service_pb2_grpc as pb_grpc
from referral.v1 import events_pb2 as ref_ev
from services.common import db as dbs
from services.common.auth import Role
from services.notify.service_layer.retention import forget_idle_contacts

from .notify_support import (
    AdjustableClock, Patient, Referral, eventually, local, new_mobile, new_openid, notify_service, publish, vendor_env)

RETENTION = timedelta(days=180)


async def _contact(db, patient: Patient):
    return await db.fetchrow("SELECT * FROM contacts WHERE patient_id = $1", patient.patient_id)


async def _age(db, patients: list[Patient], *, routes: bool) -> None:
    """Moves these patients' contact and messages (and, with `routes`, their referrals'
    last event) 200 days into the past."""
    ids = [p.patient_id for p in patients]
    await db.execute("UPDATE contacts SET updated_at = now() - interval '200 days' WHERE patient_id = ANY($1)", ids)
    await db.execute("UPDATE deliveries d SET updated_at = now() - interval '200 days' FROM notifications n "
                     "WHERE n.id = d.notification_id AND n.recipient = ANY($1) AND d.status NOT IN ('PENDING', 'SENDING')",
                     ids)
    if routes:
        await db.execute("UPDATE referral_routes SET updated_at = now() - interval '200 days' "
                         "WHERE patient_id = ANY($1)", ids)


async def test_an_idle_patients_number_is_forgotten_and_comes_back_with_the_next_referral(
        stack, monkeypatch, vendors, broker, db):
    wechat, aliyun, _ = vendors
    idle = Referral(Patient(stack, openid=new_openid()))
    booked = Referral(Patient(stack))   # an appointment still ahead
    recent = Referral(Patient(stack))   # a referral event inside the retention
    held = Referral(Patient(stack))     # a message still waiting to go
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)):
        for r in (idle, booked, recent, held):
            await publish(broker, r.accepted(), r)
        await publish(broker, booked.scheduled([booked.item(datetime.now(UTC) + timedelta(days=3))]), booked)
        await eventually(lambda: len(wechat.accepted) == 1 and len(aliyun.accepted) >= 4)
    # Only the appointment keeps `booked`: its reminders are called off.
    await db.execute("UPDATE deliveries d SET status = 'CANCELLED' FROM notifications n "
                     "WHERE n.id = d.notification_id AND n.recipient = $1 AND d.status = 'PENDING'",
                     booked.patient.patient_id)
    await db.execute("UPDATE deliveries d SET status = 'PENDING', due_at = now() + interval '1 day' "
                     "FROM notifications n WHERE n.id = d.notification_id AND n.recipient = $1",
                     held.patient.patient_id)
    await db.execute("UPDATE contacts SET opt_out_non_essential = true WHERE patient_id = $1", idle.patient.patient_id)
    await db.execute("INSERT INTO wechat_template_choices (openid, template_id, accepted, decided_at) "
                     "VALUES ($1, 'wx-tmpl-booking', false, now() - interval '200 days')", idle.patient.openid)
    await _age(db, [idle.patient, booked.patient, recent.patient, held.patient], routes=False)
    await _age(db, [idle.patient, booked.patient, held.patient], routes=True)

    pool = await dbs.create_pool(stack.database_url, "notify", min_size=1, max_size=2)
    try:
        assert await forget_idle_contacts(pool, datetime.now(UTC), RETENTION, batch=1) == 1
        assert await forget_idle_contacts(pool, datetime.now(UTC), RETENTION) == 0
    finally:
        await pool.close()

    gone = await _contact(db, idle.patient)
    assert (gone["mobile_ciphertext"], gone["mobile_hash"], gone["mobile_masked"], gone["wechat_openid"]) == (
        None, None, None, None)
    assert gone["opt_out_non_essential"]  # the patient's choice outlives the number
    assert await db.fetchval("SELECT count(*) FROM wechat_template_choices WHERE openid = $1", idle.patient.openid) == 0
    for kept in (booked, recent, held):
        row = await _contact(db, kept.patient)
        assert row["mobile_ciphertext"] and row["mobile_hash"] and row["mobile_masked"]

    again = Referral(idle.patient)
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)):
        await publish(broker, again.accepted(), again)
        await eventually(lambda: len(wechat.accepted) == 2)
    back = await _contact(db, idle.patient)
    assert back["mobile_ciphertext"] and back["wechat_openid"] == idle.patient.openid
    assert wechat.accepted[-1]["openid"] == idle.patient.openid


async def _forget_idle(stack) -> None:
    pool = await dbs.create_pool(stack.database_url, "notify", min_size=1, max_size=2)
    try:
        await forget_idle_contacts(pool, datetime.now(UTC), RETENTION)
    finally:
        await pool.close()


async def _desk_sets_it_twice(stack, monkeypatch, vendors, broker, db, ref: Referral, values: list[str],
                             request, sent: list) -> None:
    """The desk sets a contact value through preferences (`request(value)`), then another; after
    each a referral event carries the referral's own value, and the desk's must stay: the message
    it causes (one more in `sent`) goes to the desk's."""
    desk = stack.metadata(ref.hospital_id, Role.REFERRAL_DESK)
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)) as (app, _):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.NotifyServiceStub(channel)
            await publish(broker, ref_ev.ReferralSubmitted(referral=ref.snapshot()), ref)
            await eventually(lambda: _contact(db, ref.patient))
            events = (ref.accepted(), ref_ev.ReferralReturned(referral=ref.snapshot(), reason="请补充材料"))
            for count, (value, event) in enumerate(zip(values, events), 1):
                await stub.SetContactPreferences(request(value), metadata=desk)
                await publish(broker, event, ref)
                await eventually(lambda: len(sent) == count)


async def _forgotten_then_referred_again(stack, monkeypatch, vendors, broker, db, patient: Patient, sent: list):
    """The patient's contact as forgotten once idle; their next referral's message is the last of `sent`."""
    await _age(db, [patient], routes=True)
    await _forget_idle(stack)
    gone = await _contact(db, patient)
    again = Referral(patient)
    told = len(sent) + 1
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)):
        await publish(broker, again.accepted(), again)
        await eventually(lambda: len(sent) == told)
    return gone


async def test_a_mobile_set_through_preferences_outranks_the_referrals_until_it_is_forgotten(
        stack, monkeypatch, vendors, broker, db):
    _, aliyun, _ = vendors
    patient = Patient(stack)  # the referral snapshots carry patient.mobile
    ref = Referral(patient)
    desk_number, later_desk_number = new_mobile(), new_mobile()
    await _desk_sets_it_twice(
        stack, monkeypatch, vendors, broker, db, ref, [desk_number, later_desk_number],
        lambda mobile: pb.SetContactPreferencesRequest(referral_id=ref.referral_id, mobile=mobile, preferences=(
            pb.ContactPreferences(patient_id=patient.patient_id, consent=True, urgent_ignores_quiet_hours=True))),
        aliyun.accepted)
    assert [m["phone"] for m in aliyun.accepted] == [desk_number, later_desk_number]

    # Forgotten with the number: the patient's next referral brings its own number back.
    gone = await _forgotten_then_referred_again(stack, monkeypatch, vendors, broker, db, patient, aliyun.accepted)
    assert (gone["mobile_ciphertext"], gone["mobile_set_by"]) == (None, None)
    assert aliyun.accepted[-1]["phone"] == patient.mobile


async def test_an_openid_set_through_preferences_outranks_the_referrals_until_it_is_forgotten(
        stack, monkeypatch, vendors, broker, db):
    wechat, aliyun, _ = vendors
    patient = Patient(stack, openid=new_openid())  # the referral snapshots carry patient.openid
    ref = Referral(patient)
    desk_openid, later_desk_openid = new_openid(), new_openid()
    await _desk_sets_it_twice(
        stack, monkeypatch, vendors, broker, db, ref, [desk_openid, later_desk_openid],
        lambda openid: pb.SetContactPreferencesRequest(referral_id=ref.referral_id, preferences=pb.ContactPreferences(
            patient_id=patient.patient_id, consent=True, urgent_ignores_quiet_hours=True,
            channels=[pb.CHANNEL_WECHAT, pb.CHANNEL_SMS], wechat_openid=openid)),
        wechat.accepted)
    assert [m["openid"] for m in wechat.accepted] == [desk_openid, later_desk_openid] and aliyun.accepted == []
    row = await _contact(db, patient)
    assert row["wechat_openid_set_by"] == row["preferences_set_by"] and row["wechat_openid_set_by"]

    # Forgotten with the openid: the patient's next referral brings its own openid back.
    gone = await _forgotten_then_referred_again(stack, monkeypatch, vendors, broker, db, patient, wechat.accepted)
    assert (gone["wechat_openid"], gone["wechat_openid_set_by"]) == (None, None)
    assert wechat.accepted[-1]["openid"] == patient.openid


async def test_the_clearing_job_measures_idleness_by_the_database_clock_not_the_policy_clock(
        stack, monkeypatch, vendors, broker, db):
    """The rows' ages are in the database's time: a policy clock set years ahead (as tests and
    a wrongly set host clock do) must not make a contact just learned look idle."""
    patient = Patient(stack, openid=new_openid())
    ref = Referral(patient)
    env = {**vendor_env(*vendors), "NOTIFY_CONTACT_PURGE_SECONDS": "0.2"}
    async with notify_service(stack, monkeypatch, env, clock=AdjustableClock(local(2035, 1, 10, 10, 0))):
        await publish(broker, ref.accepted(), ref)
        await eventually(lambda: _contact(db, patient))
        await asyncio.sleep(1.0)  # five rounds of the job
        kept = await _contact(db, patient)
    assert kept["wechat_openid"] == patient.openid
