"""Constants and factories shared by the notify channel tests (not a conftest, so it imports by a unique name)."""

from __future__ import annotations

import time

from services.notify.adapters.channels import (
    AliyunSmsChannel,
    HttpTimeouts,
    TencentSmsChannel,
    WeChatSubscribeChannel,
    WeChatTarget,
)
from tests.fakes.aliyun_sms import FakeAliyunSms
from tests.fakes.tencent_sms import FakeTencentSms
from tests.fakes.wechat import FakeWeChat

PHONE = "13812345678"
OPENID = "oAbCdEfGhIjKlMnOpQrStUvWxY_1"  # 28 characters, like real openids
OPENID_2 = "oAbCdEfGhIjKlMnOpQrStUvWxY_2"

ALIYUN_KEY_ID, ALIYUN_SECRET = "LTAI5tTestKeyId", "aliyun-secret-value"
TENCENT_ID, TENCENT_KEY = "AKIDtestSecretId00000000000000000000", "tencent-secret-key"
WECHAT_APPID, WECHAT_SECRET = "wx0123456789abcdef", "wechat-app-secret"

ALIYUN_TEMPLATE = "SMS_465000001"
TENCENT_TEMPLATE = "2100001"
WECHAT_TEMPLATE = "tmpl-referral-scheduled"
WECHAT_DATA = {
    "thing1": "心内科门诊",
    "time2": "2025年3月18日 09:30",
    "phrase3": "已预约",
    "character_string4": "RF-20250318-0042",
    "name5": "张三",
}

FAST = HttpTimeouts(connect=1.0, read=0.5, write=1.0, pool=1.0)


class ManualClock:
    """Wall clock the test can move; shared by a fake and a client when both must agree."""

    def __init__(self, start: float | None = None) -> None:
        self.now = start if start is not None else time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def aliyun_channel(fake: FakeAliyunSms, **overrides) -> AliyunSmsChannel:
    settings = dict(
        endpoint=fake.base_url, access_key_id=ALIYUN_KEY_ID, access_key_secret=ALIYUN_SECRET,
        sign_name="县医共体", timeouts=FAST, clock=fake.clock,
    )
    return AliyunSmsChannel(**{**settings, **overrides})


def tencent_channel(fake: FakeTencentSms, **overrides) -> TencentSmsChannel:
    settings = dict(
        endpoint=fake.base_url, secret_id=TENCENT_ID, secret_key=TENCENT_KEY, sdk_app_id="1400006666",
        sign_name="县医共体", region="ap-guangzhou", timeouts=FAST, clock=fake.clock,
    )
    return TencentSmsChannel(**{**settings, **overrides})


def wechat_channel(fake: FakeWeChat, **overrides) -> WeChatSubscribeChannel:
    settings = dict(
        api_base=fake.base_url, appid=WECHAT_APPID, appsecret=WECHAT_SECRET,
        target=WeChatTarget.MINI_PROGRAM, miniprogram_state="formal", timeouts=FAST, clock=fake.clock,
    )
    return WeChatSubscribeChannel(**{**settings, **overrides})
