"""notify.v1.NotifyService over gRPC: preferences, listings with delivery status, staff notes, stats."""
from __future__ import annotations

import grpc
import pytest

from notify.v1 import notify_service_pb2 as pb
from notify.v1 import notify_service_pb2_grpc as pb_grpc
from referral.v1 import events_pb2 as ref_ev
from services.common.auth import Role
from tests.support.membership import publish_members, wait_members
from tests.support.rpc_errors import field_violations

from .notify_support import Patient, Referral, eventually, new_openid, notify_service, publish, vendor_env


def _violations(err: grpc.aio.AioRpcError) -> list[str]:
    return [f for f, _ in field_violations(err)]


async def test_api_end_to_end(stack, monkeypatch, vendors, broker):
    wechat, aliyun, _ = vendors
    ref = Referral(Patient(stack))
    other = Referral(Patient(stack))
    desk = stack.metadata(ref.hospital_id, Role.REFERRAL_DESK)
    doctor = stack.metadata(ref.clinic_id, Role.CLINIC_DOCTOR)
    stranger = stack.metadata("H-elsewhere", Role.REFERRAL_DESK)
    consortium = "O" + ref.hospital_id  # this test's own consortium: membership by events
    office = stack.metadata(consortium, Role.CONSORTIUM_OFFICE)
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)) as (app, _):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.NotifyServiceStub(channel)
            await publish(broker, ref_ev.ReferralSubmitted(referral=ref.snapshot()), ref)
            await publish(broker, ref_ev.ReferralSubmitted(referral=other.snapshot()), other)

            async def known():
                try:
                    await stub.ListNotifications(pb.ListNotificationsRequest(referral_id=ref.referral_id), metadata=desk)
                    return True
                except grpc.aio.AioRpcError:
                    return False
            await eventually(known)

            # Bad input: every violation at once, and the number is never echoed.
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.SetContactPreferences(pb.SetContactPreferencesRequest(
                    referral_id=ref.referral_id, mobile="12345",
                    preferences=pb.ContactPreferences(patient_id=ref.patient.patient_id,
                                                      channels=[pb.CHANNEL_WECHAT, pb.CHANNEL_WECHAT])), metadata=doctor)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert set(_violations(bad.value)) == {"preferences.channels", "preferences.wechat_openid", "mobile"}
            assert "12345" not in bad.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as wrong_patient:
                await stub.SetContactPreferences(pb.SetContactPreferencesRequest(
                    referral_id=ref.referral_id, preferences=pb.ContactPreferences(patient_id=other.patient.patient_id)),
                    metadata=doctor)
            assert _violations(wrong_patient.value) == ["preferences.patient_id"]
            with pytest.raises(grpc.aio.AioRpcError) as hidden:
                await stub.SetContactPreferences(pb.SetContactPreferencesRequest(
                    referral_id=ref.referral_id, preferences=pb.ContactPreferences(patient_id=ref.patient.patient_id)),
                    metadata=stranger)
            assert hidden.value.code() == grpc.StatusCode.NOT_FOUND

            openid = new_openid()
            prefs = await stub.SetContactPreferences(pb.SetContactPreferencesRequest(
                referral_id=ref.referral_id, mobile="13812340000",
                preferences=pb.ContactPreferences(patient_id=ref.patient.patient_id, consent=True,
                                                  channels=[pb.CHANNEL_WECHAT, pb.CHANNEL_SMS], wechat_openid=openid,
                                                  urgent_ignores_quiet_hours=True)), metadata=doctor)
            assert prefs.has_mobile and prefs.mobile_masked == "138****0000" and prefs.wechat_openid == openid

            # A desk note goes through the approved template, once per request id.
            request = pb.SendStaffMessageRequest(referral_id=ref.referral_id, note="请明早先到一楼服务台报到",
                                                 request_id="note-1")
            first = await stub.SendStaffMessage(request, metadata=desk)
            again = await stub.SendStaffMessage(request, metadata=desk)
            assert first.name == again.name and first.template == "staff_message"
            assert first.text == "转诊服务台提醒您：请明早先到一楼服务台报到"
            await eventually(lambda: len(wechat.accepted) == 1)
            assert wechat.accepted[0]["openid"] == openid and wechat.accepted[0]["data"]["thing1"] == "请明早先到一楼服务台报到"
            with pytest.raises(grpc.aio.AioRpcError) as long_note:
                await stub.SendStaffMessage(pb.SendStaffMessageRequest(
                    referral_id=ref.referral_id, note="请拨打13812345678或访问www.example.com了解详情"), metadata=desk)
            assert _violations(long_note.value) == ["note", "note", "note"]
            with pytest.raises(grpc.aio.AioRpcError) as doctor_note:
                await stub.SendStaffMessage(request, metadata=doctor)
            assert doctor_note.value.code() == grpc.StatusCode.PERMISSION_DENIED

            async def sent():
                listing = await stub.ListNotifications(pb.ListNotificationsRequest(referral_id=ref.referral_id),
                                                       metadata=doctor)
                return listing if listing.notifications[0].status == pb.DELIVERY_STATUS_SENT else None
            listing = await eventually(sent)
            [note] = listing.notifications
            assert note.deliveries[0].channel == pb.CHANNEL_WECHAT and note.deliveries[0].vendor == "wechat"
            by_patient = await stub.ListNotifications(pb.ListNotificationsRequest(patient_id=ref.patient.patient_id),
                                                      metadata=desk)
            assert [n.name for n in by_patient.notifications] == [note.name]
            assert (await stub.ListNotifications(pb.ListNotificationsRequest(patient_id=ref.patient.patient_id),
                                                 metadata=stranger)).notifications == []
            got = await stub.GetNotification(pb.GetNotificationRequest(name=note.name), metadata=doctor)
            assert got.text == note.text

            # Before the hospital's membership arrives the office sees nothing of it.
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await stub.GetDeliveryStats(pb.GetDeliveryStatsRequest(hospital_id=ref.hospital_id), metadata=office)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            await publish_members(broker, consortium, ref.hospital_id, ref.clinic_id)
            await publish_members(broker, "X" + consortium, other.hospital_id, other.clinic_id)
            await wait_members(app.ctx.pool, ref.hospital_id, other.hospital_id)
            stats = await stub.GetDeliveryStats(pb.GetDeliveryStatsRequest(hospital_id=ref.hospital_id),
                                                metadata=office)
            assert stats.notifications == 1
            # Without a hospital: every hospital of the office's consortium, and no other.
            everything = await stub.GetDeliveryStats(pb.GetDeliveryStatsRequest(), metadata=office)
            assert everything == stats
            with pytest.raises(grpc.aio.AioRpcError) as foreign:
                await stub.GetDeliveryStats(pb.GetDeliveryStatsRequest(hospital_id=ref.hospital_id),
                                            metadata=stack.metadata("X" + consortium, Role.CONSORTIUM_OFFICE))
            assert foreign.value.code() == grpc.StatusCode.NOT_FOUND
            [wx] = stats.channels
            assert (wx.channel, wx.sent, wx.delivery_rate) == (pb.CHANNEL_WECHAT, 1, 0.0)
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await stub.GetDeliveryStats(pb.GetDeliveryStatsRequest(), metadata=desk)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert aliyun.accepted == []


async def test_a_note_with_a_number_written_in_groups_is_refused_and_sends_nothing(
        stack, monkeypatch, vendors, broker, db):
    wechat, aliyun, _ = vendors
    ref = Referral(Patient(stack))
    desk = stack.metadata(ref.hospital_id, Role.REFERRAL_DESK)
    async with notify_service(stack, monkeypatch, vendor_env(*vendors)) as (app, _):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.NotifyServiceStub(channel)
            await publish(broker, ref_ev.ReferralSubmitted(referral=ref.snapshot()), ref)
            await eventually(lambda: db.fetchval("SELECT count(*) = 1 FROM notify.referral_routes "
                                                 "WHERE referral_id = $1", ref.referral_id))
            for note in ("请回电138 1234 5678", "请回电138-1234-5678", "请回电138.1234.5678",
                         "请回电１３８１２３４５６７８", "请回电１３８－１２３４－５６７８"):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.SendStaffMessage(pb.SendStaffMessageRequest(referral_id=ref.referral_id, note=note),
                                                metadata=desk)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, note
                assert _violations(refused.value) == ["note"] and "1234" not in refused.value.details()
            # Times, dates and rooms are digits too, in short runs or short groups: such a note goes.
            fine = ["请明早8:30到3楼2诊室", "请于2025.12.15到", "10.30-11.30到2诊室", "2030-06-10复诊"]
            for note in fine:
                await stub.SendStaffMessage(pb.SendStaffMessageRequest(referral_id=ref.referral_id, note=note),
                                            metadata=desk)
            await eventually(lambda: len(aliyun.accepted) == len(fine))
    assert sorted(m["params"]["note"] for m in aliyun.accepted) == sorted(fine) and wechat.accepted == []
