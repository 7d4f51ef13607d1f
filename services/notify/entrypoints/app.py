"""`build(ctx)`: the notify service's parts, configured from the environment.

Settings (all optional on one machine):
  SMS_VENDOR             aliyun | tencent (default aliyun)
  QUIET_HOURS            "21:00-08:00" (Asia/Shanghai), "off" for none
  RECEIPTS_PORT          HTTP port of the receipt callbacks (default 8080): /receipts/aliyun,
                         /receipts/tencent and, with WECHAT_EVENT_TOKEN, /wechat/events
  WECHAT_EVENT_TOKEN     the token set for the server URL in WeChat's console; WeChat's send
                         results (subscribe_msg_sent_event) then settle WeChat deliveries
  WECHAT_API_BASE, WECHAT_APPID, WECHAT_APPSECRET, WECHAT_TARGET (mini_program | official_account),
  WECHAT_MINIPROGRAM_STATE
  ALIYUN_SMS_ENDPOINT, ALIYUN_ACCESS_KEY_ID, ALIYUN_ACCESS_KEY_SECRET, ALIYUN_SMS_SIGN_NAME, ALIYUN_REGION_ID,
  ALIYUN_SMS_PARAM_MAX (35)
  TENCENT_SMS_ENDPOINT, TENCENT_SECRET_ID, TENCENT_SECRET_KEY, TENCENT_SMS_SDK_APP_ID, TENCENT_SMS_SIGN_NAME,
  TENCENT_SMS_REGION, TENCENT_SMS_PARAM_MAX (12)
  NOTIFY_DISPATCH_POLL_SECONDS (1), NOTIFY_LEASE_SECONDS (60), NOTIFY_SEND_TIMEOUT_SECONDS (30; the lease
  must exceed it by 10 s), NOTIFY_RETRY_BASE_SECONDS (30), NOTIFY_RETRY_MAX_SECONDS (1800), NOTIFY_MAX_ATTEMPTS (5)
  NOTIFY_SMS_SAME_TEMPLATE_PER_DAY (3), NOTIFY_SMS_PER_DAY (8), NOTIFY_SMS_PER_HOUR (4),
  NOTIFY_SMS_MIN_SPACING_SECONDS (35)
  NOTIFY_TENCENT_SETTLE_SECONDS (300), NOTIFY_TENCENT_SETTLE_PULLS (3): the retry of a Tencent send whose
  answer was lost (see service_layer.dispatch)
  NOTIFY_REMINDER_DAY_BEFORE_AT ("18:00"), NOTIFY_REMINDER_BEFORE_MINUTES (120), NOTIFY_TEMPLATES_FILE
  NOTIFY_CONTACT_RETENTION_DAYS (180), NOTIFY_CONTACT_PURGE_SECONDS (3600): see service_layer.retention
Parsed and checked by services.notify.settings (a channel is complete or absent).
"""
from __future__ import annotations

import asyncio
import random
from datetime import datetime, timezone

from services.common import membership
from services.common.app import AppContext, Job, ServiceParts
from services.common.logging import get_logger
from services.common.periodic import periodic
from services.notify.adapters.channels import (
    AliyunSmsChannel,
    TencentSmsChannel,
    WeChatSubscribeChannel,
)
from services.notify.adapters.channels.base import normalize_cn_mobile
from services.notify.domain.messages import Planner, ReminderRules
from services.notify.domain.model import Channel
from services.notify.entrypoints.grpc_api import NotifyServicer
from services.notify.entrypoints.handlers import EventHandlers
from services.notify.entrypoints.receipts_server import ReceiptsServer
from services.notify.service_layer.dispatch import Channels, Dispatcher
from services.notify.service_layer.notifications import Clock, NotifyConfig, system_clock
from services.notify.service_layer.receipts import apply_receipts, apply_wechat_choices
from services.notify.service_layer.retention import forget_idle_contacts
from services.notify.settings import NotifySettings

log = get_logger(__name__)


def channels_from_settings(ns: NotifySettings) -> Channels:
    """The vendor clients of the configured channels."""
    sms_client = AliyunSmsChannel if ns.sms_vendor == "aliyun" else TencentSmsChannel
    return Channels(wechat=WeChatSubscribeChannel(**ns.wechat) if ns.wechat is not None else None,
                    sms=sms_client(**ns.sms) if ns.sms is not None else None)


class NotifyApp:
    """Holds the running parts so tests can reach them (receipts port, dispatcher)."""

    def __init__(self, *, clock: Clock | None = None, rng: random.Random | None = None) -> None:
        self.clock = clock or system_clock
        self.rng = rng
        self.dispatcher: Dispatcher | None = None
        self.receipts: ReceiptsServer | None = None
        self.config: NotifyConfig | None = None

    def build(self, ctx: AppContext) -> ServiceParts:
        ns = NotifySettings.from_settings(ctx.settings)
        channels = channels_from_settings(ns)
        if ns.wechat is None and ns.sms is None:
            log.warning("no notify channel configured: every message will end unreached")
        log.info("notify channels", **ns.describe())
        if ns.unused_sms_settings:
            log.warning("another SMS vendor's settings are set and unused: SMS_VENDOR chooses the vendor",
                        sms_vendor=ns.sms_vendor, unused=list(ns.unused_sms_settings))
        catalogue = ns.catalogue
        available = frozenset(c for c, client in ((Channel.WECHAT, channels.wechat), (Channel.SMS, channels.sms))
                              if client is not None)
        cfg = NotifyConfig(
            catalogue=catalogue,
            planner=Planner(catalogue, ReminderRules(ns.reminder_day_before_at, ns.reminder_before)),
            quiet=ns.quiet, sms_vendor=ns.sms_vendor, clock=self.clock,
            available=available, sms_param_limit=ns.sms_param_limit)
        dispatcher = Dispatcher(ctx.pool, cfg, channels, ctx.pii, ns.dispatch, rng=self.rng)

        def soon() -> None:
            # Called inside the event's transaction: look again just after it commits.
            asyncio.get_running_loop().call_later(0.05, dispatcher.wake)

        handlers = EventHandlers(cfg, ctx.pii, on_change=soon)
        def phone_hash(phone: str) -> str:
            # The same keyed hash as contacts.mobile_hash: receipt rows hold no guessable number.
            return ctx.pii.lookup_hash(normalize_cn_mobile(phone))

        async def on_receipts(receipts) -> None:
            await apply_receipts(ctx.pool, receipts, cfg, on_fallback=dispatcher.wake)

        receipts = ReceiptsServer(on_receipts, port=ns.receipts_port, phone_hasher=phone_hash,
                                  wechat_token=ns.wechat_event_token,
                                  # The same keyed hash as for numbers: receipt rows hold no openid.
                                  openid_hasher=ctx.pii.lookup_hash,
                                  on_wechat_choices=lambda choices: apply_wechat_choices(ctx.pool, choices))
        self.dispatcher, self.receipts, self.config = dispatcher, receipts, cfg
        servicer = NotifyServicer(ctx.pool, cfg, ctx.pii, on_new_delivery=dispatcher.wake)
        retention = ns.contact_retention
        # Wall time, not the policy clock (quiet hours, reminders): the ages compared are the
        # rows' own timestamps, which the database writes by its clock. (A test that moves the
        # policy clock years ahead would otherwise see every contact as idle, its own too.)
        forget_job = periodic("idle contacts cleared", ns.contact_purge_seconds,
                              lambda: forget_idle_contacts(ctx.pool, datetime.now(timezone.utc), retention))
        return ServiceParts(registrars=[servicer.register], subscriptions=[*handlers.subscriptions(), membership.subscription("notify-membership")],
                            background=[Job(dispatcher.run, dispatcher.stop), receipts.run, forget_job],
                            on_stop=[channels.aclose])


def build(ctx: AppContext) -> ServiceParts:
    return NotifyApp().build(ctx)
