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
  NOTIFY_REMINDER_DAY_BEFORE_AT ("18:00"), NOTIFY_REMINDER_BEFORE_MINUTES (120), NOTIFY_TEMPLATES_FILE
  NOTIFY_CONTACT_RETENTION_DAYS (180), NOTIFY_CONTACT_PURGE_SECONDS (3600): see service_layer.retention
"""
from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

from services.common import membership
from services.common.app import AppContext, ServiceParts
from services.common.config import Settings
from services.common.periodic import periodic
from services.notify.adapters.channels import (
    AliyunSmsChannel,
    TencentSmsChannel,
    WeChatSubscribeChannel,
    WeChatTarget,
)
from services.notify.adapters.channels.base import normalize_cn_mobile
from services.notify.domain.messages import Planner, ReminderRules
from services.notify.domain.model import Channel
from services.notify.domain.policy import Caps, QuietHours, RetryPolicy
from services.notify.domain.templates import Catalogue
from services.notify.entrypoints.grpc_api import NotifyServicer
from services.notify.entrypoints.handlers import EventHandlers
from services.notify.entrypoints.receipts_server import ReceiptsServer
from services.notify.service_layer.dispatch import Channels, Dispatcher, DispatchSettings
from services.notify.service_layer.notifications import Clock, NotifyConfig, system_clock
from services.notify.service_layer.receipts import apply_receipts, apply_wechat_choices
from services.notify.service_layer.retention import forget_idle_contacts


def _f(s: Settings, name: str, default: float) -> float:
    raw = s.get(name, str(default))
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def channels_from_settings(s: Settings) -> tuple[Channels, str, int]:
    vendor = s.get("SMS_VENDOR", "aliyun").lower()
    if vendor not in ("aliyun", "tencent"):
        raise ValueError(f"SMS_VENDOR must be aliyun or tencent, got {vendor!r}")
    wechat = None
    if s.get("WECHAT_APPID"):
        wechat = WeChatSubscribeChannel(
            api_base=s.get("WECHAT_API_BASE", "https://api.weixin.qq.com"), appid=s.get("WECHAT_APPID"),
            appsecret=s.get("WECHAT_APPSECRET"), target=WeChatTarget(s.get("WECHAT_TARGET", "mini_program")),
            miniprogram_state=s.get("WECHAT_MINIPROGRAM_STATE") or None)
    sms = None
    if vendor == "aliyun" and s.get("ALIYUN_ACCESS_KEY_ID"):
        sms = AliyunSmsChannel(
            endpoint=s.get("ALIYUN_SMS_ENDPOINT", "https://dysmsapi.aliyuncs.com"),
            access_key_id=s.get("ALIYUN_ACCESS_KEY_ID"), access_key_secret=s.get("ALIYUN_ACCESS_KEY_SECRET"),
            sign_name=s.get("ALIYUN_SMS_SIGN_NAME"), region_id=s.get("ALIYUN_REGION_ID", "cn-hangzhou"))
    if vendor == "tencent" and s.get("TENCENT_SECRET_ID"):
        sms = TencentSmsChannel(
            endpoint=s.get("TENCENT_SMS_ENDPOINT", "https://sms.tencentcloudapi.com"),
            secret_id=s.get("TENCENT_SECRET_ID"), secret_key=s.get("TENCENT_SECRET_KEY"),
            sdk_app_id=s.get("TENCENT_SMS_SDK_APP_ID"), sign_name=s.get("TENCENT_SMS_SIGN_NAME"),
            region=s.get("TENCENT_SMS_REGION", "ap-guangzhou"))
    limit = int(_f(s, "ALIYUN_SMS_PARAM_MAX", 35) if vendor == "aliyun" else _f(s, "TENCENT_SMS_PARAM_MAX", 12))
    return Channels(wechat=wechat, sms=sms), vendor, limit


class NotifyApp:
    """Holds the running parts so tests can reach them (receipts port, dispatcher)."""

    def __init__(self, *, clock: Clock | None = None, rng: random.Random | None = None) -> None:
        self.clock = clock or system_clock
        self.rng = rng
        self.dispatcher: Dispatcher | None = None
        self.receipts: ReceiptsServer | None = None
        self.config: NotifyConfig | None = None

    def build(self, ctx: AppContext) -> ServiceParts:
        s = ctx.settings
        channels, vendor, sms_param_limit = channels_from_settings(s)
        hh, mm = (int(x) for x in s.get("NOTIFY_REMINDER_DAY_BEFORE_AT", "18:00").split(":"))
        templates = s.get("NOTIFY_TEMPLATES_FILE")
        catalogue = Catalogue.load(Path(templates) if templates else None)
        available = frozenset(c for c, client in ((Channel.WECHAT, channels.wechat), (Channel.SMS, channels.sms))
                              if client is not None)
        cfg = NotifyConfig(
            catalogue=catalogue,
            planner=Planner(catalogue, ReminderRules(
                (hh, mm), timedelta(minutes=_f(s, "NOTIFY_REMINDER_BEFORE_MINUTES", 120)))),
            quiet=QuietHours.parse(s.get("QUIET_HOURS", "21:00-08:00")), sms_vendor=vendor, clock=self.clock,
            available=available, sms_param_limit=sms_param_limit)
        settings = DispatchSettings(
            lease=timedelta(seconds=_f(s, "NOTIFY_LEASE_SECONDS", 60)),
            send_timeout=timedelta(seconds=_f(s, "NOTIFY_SEND_TIMEOUT_SECONDS", 30)),
            poll_seconds=_f(s, "NOTIFY_DISPATCH_POLL_SECONDS", 1.0),
            retry=RetryPolicy(base=timedelta(seconds=_f(s, "NOTIFY_RETRY_BASE_SECONDS", 30)),
                              cap=timedelta(seconds=_f(s, "NOTIFY_RETRY_MAX_SECONDS", 1800)),
                              max_attempts=int(_f(s, "NOTIFY_MAX_ATTEMPTS", 5))),
            caps=Caps(same_template_per_day=int(_f(s, "NOTIFY_SMS_SAME_TEMPLATE_PER_DAY", 3)),
                      per_day=int(_f(s, "NOTIFY_SMS_PER_DAY", 8)), per_hour=int(_f(s, "NOTIFY_SMS_PER_HOUR", 4)),
                      min_spacing=timedelta(seconds=_f(s, "NOTIFY_SMS_MIN_SPACING_SECONDS", 35))))
        dispatcher = Dispatcher(ctx.pool, cfg, channels, ctx.pii, settings, rng=self.rng)

        def soon() -> None:
            # Called inside the event's transaction: look again just after it commits.
            asyncio.get_running_loop().call_later(0.05, dispatcher.wake)

        handlers = EventHandlers(cfg, ctx.pii, on_change=soon)
        def phone_hash(phone: str) -> str:
            # The same keyed hash as contacts.mobile_hash: receipt rows hold no guessable number.
            return ctx.pii.lookup_hash(normalize_cn_mobile(phone))

        async def on_receipts(receipts) -> None:
            await apply_receipts(ctx.pool, receipts, cfg, on_fallback=dispatcher.wake)

        receipts = ReceiptsServer(on_receipts, port=int(_f(s, "RECEIPTS_PORT", 8080)), phone_hasher=phone_hash,
                                  wechat_token=s.get("WECHAT_EVENT_TOKEN", ""),
                                  # The same keyed hash as for numbers: receipt rows hold no openid.
                                  openid_hasher=ctx.pii.lookup_hash,
                                  on_wechat_choices=lambda choices: apply_wechat_choices(ctx.pool, choices))
        self.dispatcher, self.receipts, self.config = dispatcher, receipts, cfg
        servicer = NotifyServicer(ctx.pool, cfg, ctx.pii, on_new_delivery=dispatcher.wake)
        retention = timedelta(days=_f(s, "NOTIFY_CONTACT_RETENTION_DAYS", 180))
        # Wall time, not the policy clock (quiet hours, reminders): the ages compared are the
        # rows' own timestamps, which the database writes by its clock. (A test that moves the
        # policy clock years ahead would otherwise see every contact as idle, its own too.)
        forget_job = periodic("idle contacts cleared", _f(s, "NOTIFY_CONTACT_PURGE_SECONDS", 3600),
                              lambda: forget_idle_contacts(ctx.pool, datetime.now(timezone.utc), retention))
        return ServiceParts(registrars=[servicer.register], subscriptions=[*handlers.subscriptions(), membership.subscription("notify-membership")],
                            background=[dispatcher.run, receipts.run, forget_job], on_stop=[channels.aclose])


def build(ctx: AppContext) -> ServiceParts:
    return NotifyApp().build(ctx)
