"""The notify.v1.NotifyService servicer: protobuf in and out, use cases in service_layer.api."""
from __future__ import annotations

from datetime import datetime

import asyncpg
import grpc

from notify.v1 import notify_service_pb2 as pb
from notify.v1 import notify_service_pb2_grpc as pb_grpc
from services.common.auth import current_caller
from services.common.errors import FieldViolation, InvalidArgument
from services.common.pii import PiiCipher
from services.notify.domain.model import SHANGHAI, Channel, delivery_rate
from services.notify.service_layer import api
from services.notify.service_layer.notifications import NotifyConfig, timestamp_of

_CHANNEL = {Channel.WECHAT.value: pb.CHANNEL_WECHAT, Channel.SMS.value: pb.CHANNEL_SMS}
_FROM_PB = {pb.CHANNEL_WECHAT: Channel.WECHAT, pb.CHANNEL_SMS: Channel.SMS}


def delivery_pb(row: asyncpg.Record) -> pb.Delivery:
    return pb.Delivery(
        delivery_id=str(row["id"]), channel=_CHANNEL[row["channel"]], vendor=row["vendor"],
        status=pb.DeliveryStatus.Value(f"DELIVERY_STATUS_{row['status']}"), attempts=row["attempts"],
        vendor_code=row["vendor_code"] or "", due_time=timestamp_of(row["due_at"]), send_time=timestamp_of(row["sent_at"]),
        deliver_time=timestamp_of(row["delivered_at"]), status_reason=row["status_reason"] or "")


def notification_pb(row: asyncpg.Record, deliveries: list[asyncpg.Record]) -> pb.Notification:
    items = [delivery_pb(d) for d in deliveries]
    return pb.Notification(
        name=f"notifications/{row['id']}", referral_id=row["referral_id"], patient_id=row["recipient"],
        template=row["template"], template_version=row["template_version"], text=row["text"],
        urgent=row["urgent"], essential=row["essential"], deliveries=items,
        status=items[-1].status if items else pb.DELIVERY_STATUS_UNSPECIFIED,
        create_time=timestamp_of(row["created_at"]), skip_reason=row["skip_reason"] or "")


def preferences_pb(row: asyncpg.Record) -> pb.ContactPreferences:
    return pb.ContactPreferences(
        patient_id=row["patient_id"], channels=[_CHANNEL[c] for c in row["channels"]],
        wechat_openid=row["wechat_openid"] or "", consent=row["consent"],
        opt_out_non_essential=row["opt_out_non_essential"],
        urgent_ignores_quiet_hours=row["urgent_ignores_quiet_hours"],
        has_mobile=bool(row["mobile_ciphertext"]), mobile_masked=row["mobile_masked"] or "",
        update_time=timestamp_of(row["updated_at"]))


def _day(d, field_name: str) -> datetime | None:
    if not (d.year or d.month or d.day):
        return None
    try:
        return datetime(d.year, d.month, d.day, tzinfo=SHANGHAI)
    except ValueError:
        raise InvalidArgument(FieldViolation(field_name, "is not a calendar date")) from None


class NotifyServicer(pb_grpc.NotifyServiceServicer):
    def __init__(self, pool: asyncpg.Pool, cfg: NotifyConfig, pii: PiiCipher, on_new_delivery=None) -> None:
        self._pool = pool
        self._cfg = cfg
        self._pii = pii
        self._wake = on_new_delivery or (lambda: None)

    def register(self, server: grpc.aio.Server) -> list[str]:
        pb_grpc.add_NotifyServiceServicer_to_server(self, server)
        return [pb.DESCRIPTOR.services_by_name["NotifyService"].full_name]

    async def SetContactPreferences(self, request: pb.SetContactPreferencesRequest, context) -> pb.ContactPreferences:
        p = request.preferences
        raw = list(p.channels)
        row = await api.set_preferences(self._pool, self._pii, current_caller(), api.PreferencesInput(
            referral_id=request.referral_id, patient_id=p.patient_id,
            channels=[_FROM_PB[c] for c in raw if c in _FROM_PB], wechat_openid=p.wechat_openid,
            consent=p.consent, opt_out_non_essential=p.opt_out_non_essential,
            urgent_ignores_quiet_hours=p.urgent_ignores_quiet_hours, mobile=request.mobile.strip()), raw)
        return preferences_pb(row)

    async def ListNotifications(self, request: pb.ListNotificationsRequest, context) -> pb.ListNotificationsResponse:
        items, token = await api.list_notifications(
            self._pool, current_caller(), referral_id=request.referral_id, patient_id=request.patient_id,
            page_size=request.page_size, page_token=request.page_token)
        return pb.ListNotificationsResponse(notifications=[notification_pb(r, d) for r, d in items],
                                            next_page_token=token)

    async def GetNotification(self, request: pb.GetNotificationRequest, context) -> pb.Notification:
        prefix = "notifications/"
        if not request.name.startswith(prefix):
            raise InvalidArgument(FieldViolation("name", "must be notifications/{notification_id}"))
        row, deliveries = await api.get_notification(self._pool, current_caller(), request.name[len(prefix):])
        return notification_pb(row, deliveries)

    async def SendStaffMessage(self, request: pb.SendStaffMessageRequest, context) -> pb.Notification:
        row, deliveries = await api.send_staff_message(
            self._pool, self._cfg, current_caller(), referral_id=request.referral_id, note=request.note,
            urgent=request.urgent, request_id=request.request_id)
        self._wake()
        return notification_pb(row, deliveries)

    async def GetDeliveryStats(self, request: pb.GetDeliveryStatsRequest, context) -> pb.DeliveryStats:
        start = _day(request.start_date, "start_date") if request.HasField("start_date") else None
        end = _day(request.end_date, "end_date") if request.HasField("end_date") else None
        rows, total, skipped = await api.delivery_stats(self._pool, current_caller(), hospital_id=request.hospital_id,
                                                        start=start, end=end, now=self._cfg.clock())
        stats: dict[tuple[str, str], pb.ChannelStats] = {}
        for r in rows:
            s = stats.setdefault((r["channel"], r["vendor"]), pb.ChannelStats(channel=_CHANNEL[r["channel"]],
                                                                              vendor=r["vendor"]))
            field = {"SENDING": "pending"}.get(r["status"], r["status"].lower())
            setattr(s, field, getattr(s, field) + r["n"])
        for s in stats.values():
            s.delivery_rate = delivery_rate(delivered=s.delivered, sent=s.sent, failed=s.failed, fell_back=s.fell_back)
        return pb.DeliveryStats(channels=list(stats.values()), notifications=total, skipped=skipped)
