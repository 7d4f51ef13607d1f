"""The notify service's own settings, read once and checked before it connects (the
variables are listed in services.notify.entrypoints.app).

A channel is configured or absent, never half: a WeChat app id without its secret, or
an SMS vendor missing a credential or its sign name, would start a service whose every
send fails. Outside DEV_MODE at least one channel must be complete, and vendor endpoints
must be https URLs (DEV_MODE allows http for the loopback sandbox).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from services.common.app import SHUTDOWN_CLOSING_SECONDS, shutdown_work_seconds
from services.common.config import Reader, Settings
from services.notify.adapters.channels import WeChatTarget
from services.notify.domain.messages import TEMPLATES
from services.notify.domain.policy import Caps, QuietHours, RetryPolicy
from services.notify.domain.templates import INSTRUCTIONS, Catalogue
from services.notify.service_layer.api import STAFF_MESSAGE
from services.notify.service_layer.dispatch import DispatchSettings

SMS_VENDORS = ("aliyun", "tencent")
WECHAT_API_BASE = "https://api.weixin.qq.com"
# Per vendor: endpoint variable and default, the variables it cannot send without, the
# longest template variable it accepts, and the channel client's keyword for each.
_SMS = {
    "aliyun": ("ALIYUN_SMS_ENDPOINT", "https://dysmsapi.aliyuncs.com", 35, {
        "ALIYUN_ACCESS_KEY_ID": "access_key_id", "ALIYUN_ACCESS_KEY_SECRET": "access_key_secret",
        "ALIYUN_SMS_SIGN_NAME": "sign_name"}),
    "tencent": ("TENCENT_SMS_ENDPOINT", "https://sms.tencentcloudapi.com", 12, {
        "TENCENT_SECRET_ID": "secret_id", "TENCENT_SECRET_KEY": "secret_key",
        "TENCENT_SMS_SDK_APP_ID": "sdk_app_id", "TENCENT_SMS_SIGN_NAME": "sign_name"}),
}
_ENDPOINTS = ("WECHAT_API_BASE", *(spec[0] for spec in _SMS.values()))
# Every template a message can name: the planner's, the instructions message and staff notes.
REQUIRED_TEMPLATES = TEMPLATES | {INSTRUCTIONS, STAFF_MESSAGE}


@dataclass(frozen=True)
class NotifySettings:
    sms_vendor: str
    sms_param_limit: int
    # The channel clients' keyword arguments; None: the channel is not configured.
    wechat: dict[str, Any] | None
    sms: dict[str, Any] | None
    catalogue: Catalogue
    quiet: QuietHours
    reminder_day_before_at: tuple[int, int]
    reminder_before: timedelta
    dispatch: DispatchSettings
    receipts_port: int
    wechat_event_token: str
    contact_retention: timedelta
    contact_purge_seconds: float
    # Another vendor's settings, set beside SMS_VENDOR and unused: the start's log names them
    # (a vendors' secret may hold both, to switch by SMS_VENDOR alone).
    unused_sms_settings: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> "NotifySettings":
        r = settings.reader()
        dev = settings.dev_mode
        vendor, unused = _vendor(r)
        endpoints = {name: r.url(name, r.text(name), plain_http=dev) for name in _ENDPOINTS if r.raw(name)}
        wechat = _wechat(r, endpoints)
        sms = _sms(r, vendor, endpoints)
        if not dev and wechat is None and sms is None:
            r.problem("WECHAT_APPID", "or the SMS vendor's settings must be set: with no complete channel "
                      "(WECHAT_APPID and WECHAT_APPSECRET, or every setting of SMS_VENDOR) no patient is told")
        endpoint_var, _, param_max, _ = _SMS[vendor]
        param_limit = r.integer(f"{vendor.upper()}_SMS_PARAM_MAX", param_max, minimum=1)
        templates = r.raw("NOTIFY_TEMPLATES_FILE")
        catalogue = r.parsed("NOTIFY_TEMPLATES_FILE", templates or "", _catalogue)
        dispatch = _dispatch(r, None if dev else shutdown_work_seconds(settings.shutdown_grace_seconds))
        parsed = cls(
            sms_vendor=vendor, sms_param_limit=param_limit, wechat=wechat, sms=sms,
            catalogue=catalogue,  # type: ignore[arg-type] - None only with a problem noted
            quiet=r.parsed("QUIET_HOURS", "21:00-08:00", QuietHours.parse) or QuietHours(),
            reminder_day_before_at=r.clock_time("NOTIFY_REMINDER_DAY_BEFORE_AT", "18:00"),
            reminder_before=timedelta(minutes=r.number("NOTIFY_REMINDER_BEFORE_MINUTES", 120.0, minimum=0.0)),
            dispatch=dispatch,  # type: ignore[arg-type]
            receipts_port=r.integer("RECEIPTS_PORT", 8080, minimum=0, maximum=65535),
            wechat_event_token=r.text("WECHAT_EVENT_TOKEN"),
            contact_retention=timedelta(days=r.number("NOTIFY_CONTACT_RETENTION_DAYS", 180.0, minimum=1.0)),
            contact_purge_seconds=r.number("NOTIFY_CONTACT_PURGE_SECONDS", 3600.0, minimum=0.01),
            unused_sms_settings=unused,
        )
        r.check()
        return parsed

    def describe(self) -> dict[str, Any]:
        """The channels in use, for the start's log line: no credential, only where they go."""
        def host(url: str) -> str:
            return urlsplit(url).hostname or ""
        return {
            "wechat": None if self.wechat is None else {"target": self.wechat["target"].value,
                                                        "api": host(self.wechat["api_base"])},
            "sms": None if self.sms is None else {"vendor": self.sms_vendor, "api": host(self.sms["endpoint"])},
        }


def _catalogue(path: str) -> Catalogue:
    try:
        catalogue = Catalogue.load(Path(path) if path else None)
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror}") from None
    catalogue.require(REQUIRED_TEMPLATES)
    return catalogue


def _given(r: Reader, vendor: str) -> list[str]:
    return [name for name in _SMS[vendor][3] if r.raw(name)]


def _vendor(r: Reader) -> tuple[str, tuple[str, ...]]:
    """SMS_VENDOR, else the vendor whose settings are set, and the other vendor's settings that
    are set and unused: a vendor's credentials are never ignored without a word, as then SMS
    would silently be off (or another vendor's)."""
    given = {vendor: _given(r, vendor) for vendor in SMS_VENDORS}
    set_up = [vendor for vendor in SMS_VENDORS if given[vendor]]
    chosen = r.raw("SMS_VENDOR")
    if chosen is None:
        if len(set_up) > 1:
            r.problem("SMS_VENDOR", f"must be set: the settings of {' and '.join(set_up)} are all set "
                      f"({', '.join(name for v in set_up for name in given[v])}), and only one vendor sends")
        return (set_up[0] if len(set_up) == 1 else "aliyun"), ()
    vendor = r.choice("SMS_VENDOR", "aliyun", SMS_VENDORS)
    return vendor, tuple(name for other in set_up if other != vendor for name in given[other])


def _wechat(r: Reader, endpoints: dict[str, str]) -> dict[str, Any] | None:
    appid, secret = r.raw("WECHAT_APPID"), r.raw("WECHAT_APPSECRET")
    target = r.choice("WECHAT_TARGET", WeChatTarget.MINI_PROGRAM.value, [t.value for t in WeChatTarget])
    if appid is None and secret is None:
        return None
    if appid is None:
        r.problem("WECHAT_APPID", "must be set: WECHAT_APPSECRET is, and WeChat needs both")
        return None
    if secret is None:
        r.problem("WECHAT_APPSECRET", "must be set: WECHAT_APPID is, and WeChat needs both")
        return None
    return {"api_base": endpoints.get("WECHAT_API_BASE", WECHAT_API_BASE), "appid": appid, "appsecret": secret,
            "target": WeChatTarget(target), "miniprogram_state": r.raw("WECHAT_MINIPROGRAM_STATE")}


def _sms(r: Reader, vendor: str, endpoints: dict[str, str]) -> dict[str, Any] | None:
    """The chosen vendor's client settings: all of them (chosen by SMS_VENDOR or by setting
    any of them), or none."""
    endpoint_var, endpoint_default, _, fields = _SMS[vendor]
    given = {name: r.raw(name) for name in fields}
    if r.raw("SMS_VENDOR") is None and not any(given.values()):
        return None
    missing = [name for name, value in given.items() if value is None]
    for name in missing:
        r.problem(name, f"must be set for SMS_VENDOR={vendor}")
    if missing:
        return None
    region_var = "ALIYUN_REGION_ID" if vendor == "aliyun" else "TENCENT_SMS_REGION"
    region = r.text(region_var, "cn-hangzhou" if vendor == "aliyun" else "ap-guangzhou")
    return {"endpoint": endpoints.get(endpoint_var, endpoint_default),
            **{arg: given[name] for name, arg in fields.items()},
            ("region_id" if vendor == "aliyun" else "region"): region}


def _dispatch(r: Reader, work_seconds: float | None) -> DispatchSettings | None:
    """`work_seconds`: what a shutdown leaves the sends in flight (None: unchecked, DEV_MODE)."""
    lease = r.number("NOTIFY_LEASE_SECONDS", 60.0, minimum=1.0)
    send_timeout = r.number("NOTIFY_SEND_TIMEOUT_SECONDS", 7.0, minimum=0.1)
    # At a stop the dispatcher lets a delivery in flight finish: a Tencent status pull and then
    # the send, each bounded by the send timeout. Cut off past the budget, the send could go
    # out again under a lapsed lease.
    if work_seconds is not None and 2 * send_timeout > work_seconds:
        r.problem("NOTIFY_SEND_TIMEOUT_SECONDS", f"must be at most {work_seconds / 2:g}: a status pull and a send, "
                  f"each bounded by it, must end within the {work_seconds:g} s a shutdown leaves them "
                  f"(SHUTDOWN_GRACE_SECONDS less up to {SHUTDOWN_CLOSING_SECONDS:g} s)", f"{send_timeout:g}")
    try:
        return DispatchSettings(
            lease=timedelta(seconds=lease), send_timeout=timedelta(seconds=send_timeout),
            poll_seconds=r.number("NOTIFY_DISPATCH_POLL_SECONDS", 1.0, minimum=0.01),
            retry=RetryPolicy(base=timedelta(seconds=r.number("NOTIFY_RETRY_BASE_SECONDS", 30.0, minimum=0.01)),
                              cap=timedelta(seconds=r.number("NOTIFY_RETRY_MAX_SECONDS", 1800.0, minimum=0.01)),
                              max_attempts=r.integer("NOTIFY_MAX_ATTEMPTS", 5, minimum=1)),
            caps=Caps(same_template_per_day=r.integer("NOTIFY_SMS_SAME_TEMPLATE_PER_DAY", 3, minimum=1),
                      per_day=r.integer("NOTIFY_SMS_PER_DAY", 8, minimum=1),
                      per_hour=r.integer("NOTIFY_SMS_PER_HOUR", 4, minimum=1),
                      min_spacing=timedelta(seconds=r.number("NOTIFY_SMS_MIN_SPACING_SECONDS", 35.0,
                                                             minimum=0.0))),
            settle_wait=timedelta(seconds=r.number("NOTIFY_TENCENT_SETTLE_SECONDS", 300.0, minimum=0.01)),
            settle_pulls=r.integer("NOTIFY_TENCENT_SETTLE_PULLS", 3, minimum=1))
    except ValueError as exc:
        r.problem("NOTIFY_LEASE_SECONDS", f"is too short: {exc}", f"{lease:g}")
        return None
