"""No full mainland mobile number, and no WeChat access token, ever reaches a log line."""

from __future__ import annotations

import logging
import re

from notify_channels_support import OPENID, PHONE, WECHAT_DATA, WECHAT_TEMPLATE

from services.notify.adapters.channels import SmsMessage, WeChatMessage, mask_phone

FULL_MOBILE = re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)")


async def test_no_full_phone_number_or_token_in_logs(caplog, aliyun, aliyun_fake, tencent, tencent_fake,
                                                      wechat, wechat_fake):
    caplog.set_level(logging.DEBUG)
    params = {"hospital": "县医院", "time": "上午"}
    await aliyun.send(SmsMessage(PHONE, "SMS_465000001", params, "dlv-1"))
    await aliyun.send(SmsMessage("+86" + PHONE, "SMS_465000001", params))  # flow control or accepted
    await aliyun.send(SmsMessage("13900000000", "SMS_465000001", params))  # block list
    await tencent.send(SmsMessage(PHONE, "2100001", params, "dlv-2"))
    await tencent.send(SmsMessage("1381234567", "2100001", params))  # malformed number
    await wechat.send(WeChatMessage(OPENID, WECHAT_TEMPLATE, WECHAT_DATA))
    wechat_fake.expire_token()
    await wechat.send(WeChatMessage(OPENID, WECHAT_TEMPLATE, WECHAT_DATA))

    text = caplog.text
    assert "138****5678" in text  # the masked form is what does get logged
    assert FULL_MOBILE.findall(text) == []
    assert wechat_fake.live_token not in text
    assert "access_token=***" in text  # httpx's request line is redacted, not dropped


def test_mask_phone_shapes():
    assert mask_phone("13812345678") == "138****5678"
    assert mask_phone("+8613812345678") == "138****5678"
    assert mask_phone("008613812345678") == "138****5678"
    assert mask_phone(None) == "-"
    assert mask_phone("123") == "***"


def test_every_client_is_a_channel(aliyun, tencent, wechat):
    from services.notify.adapters.channels import Channel

    assert all(isinstance(c, Channel) for c in (aliyun, tencent, wechat))
    assert {c.name for c in (aliyun, tencent, wechat)} == {"aliyun_sms", "tencent_sms", "wechat"}
