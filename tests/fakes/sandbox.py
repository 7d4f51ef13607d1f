"""The three fake vendors wired to notify's template catalogue: one place for it.

Used by the notify tests, the end-to-end tests, and `make run` when no vendor
credentials are configured (so a developer sees every message the system sends).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from services.notify.domain.templates import Catalogue
from tests.fakes.aliyun_sms import FakeAliyunSms
from tests.fakes.receipts import ReceiptPusher
from tests.fakes.tencent_sms import FakeTencentSms
from tests.fakes.wechat import FakeWeChat

ALIYUN_KEY_ID, ALIYUN_SECRET = "LTAI5tNotifyTestKey", "aliyun-notify-secret"
TENCENT_ID, TENCENT_KEY = "AKIDnotifyTest000000000000000000000000", "tencent-notify-key"
WECHAT_APPID, WECHAT_SECRET = "wx00notify000test", "wechat-notify-secret"
WECHAT_EVENT_TOKEN = "wechat-server-url-token"
SIGN = "县医共体"
TENCENT_APP = "1400009999"
BLACKLISTED = "13900000000"
# Rate windows generous enough for bursts; the caps tests set their own.
LOOSE = [(86400, 1000, "isv.BUSINESS_LIMIT_CONTROL")]
LOOSE_TENCENT = [(86400, 1000, "LimitExceeded.PhoneNumberDailyLimit")]


def fakes(catalogue: Catalogue | None = None) -> tuple[FakeWeChat, FakeAliyunSms, FakeTencentSms]:
    catalogue = catalogue or Catalogue.load()
    templates = catalogue.templates.values()
    wechat = FakeWeChat(appid=WECHAT_APPID, appsecret=WECHAT_SECRET, rate_windows=[(60, 1000, "45009")],
                        templates={t.wechat.template_id: list(t.wechat.data) for t in templates})
    aliyun = FakeAliyunSms(access_keys={ALIYUN_KEY_ID: ALIYUN_SECRET}, sign_names={SIGN},
                           templates={t.aliyun: list(t.params) for t in templates},
                           blacklist={BLACKLISTED}, rate_windows=LOOSE)
    tencent = FakeTencentSms(secrets={TENCENT_ID: TENCENT_KEY}, sdk_app_id=TENCENT_APP, sign_names={SIGN},
                             templates={t.tencent: len(t.params) for t in templates},
                             blacklist={BLACKLISTED}, rate_windows=LOOSE_TENCENT)
    return wechat, aliyun, tencent


def vendor_env(wechat: FakeWeChat, aliyun: FakeAliyunSms, tencent: FakeTencentSms,
               vendor: str = "aliyun") -> dict[str, str]:
    """notify's settings pointing at the fakes (credentials as the fakes expect)."""
    return {
        "SMS_VENDOR": vendor,
        "WECHAT_API_BASE": wechat.base_url, "WECHAT_APPID": WECHAT_APPID, "WECHAT_APPSECRET": WECHAT_SECRET,
        "WECHAT_MINIPROGRAM_STATE": "formal", "WECHAT_EVENT_TOKEN": WECHAT_EVENT_TOKEN,
        "ALIYUN_SMS_ENDPOINT": aliyun.base_url, "ALIYUN_ACCESS_KEY_ID": ALIYUN_KEY_ID,
        "ALIYUN_ACCESS_KEY_SECRET": ALIYUN_SECRET, "ALIYUN_SMS_SIGN_NAME": SIGN,
        "TENCENT_SMS_ENDPOINT": tencent.base_url, "TENCENT_SECRET_ID": TENCENT_ID,
        "TENCENT_SECRET_KEY": TENCENT_KEY, "TENCENT_SMS_SDK_APP_ID": TENCENT_APP, "TENCENT_SMS_SIGN_NAME": SIGN,
    }


@dataclass
class Sandbox:
    wechat: FakeWeChat
    aliyun: FakeAliyunSms
    tencent: FakeTencentSms
    pusher: ReceiptPusher | None = field(default=None)

    def env(self, vendor: str = "aliyun") -> dict[str, str]:
        return vendor_env(self.wechat, self.aliyun, self.tencent, vendor)

    async def stop(self) -> None:
        if self.pusher is not None:
            await self.pusher.stop()
        for fake in (self.wechat, self.aliyun, self.tencent):
            await fake.stop()


async def start(receipts_url: str | None = None) -> Sandbox:
    """The three fakes; with `receipts_url` (notify's receipts server, e.g.
    http://127.0.0.1:8080), they push delivery receipts and WeChat's send results there."""
    wechat, aliyun, tencent = fakes()
    for fake in (wechat, aliyun, tencent):
        await fake.start()
    pusher = None
    if receipts_url:
        pusher = ReceiptPusher(aliyun, tencent, receipts_url, wechat=wechat, wechat_token=WECHAT_EVENT_TOKEN)
        pusher.start()
    return Sandbox(wechat, aliyun, tencent, pusher)
