"""Fake vendors on loopback and real channel clients pointed at them."""

from __future__ import annotations

import pytest
from notify_channels_support import (
    ALIYUN_KEY_ID,
    ALIYUN_SECRET,
    ALIYUN_TEMPLATE,
    TENCENT_ID,
    TENCENT_KEY,
    TENCENT_TEMPLATE,
    WECHAT_APPID,
    WECHAT_DATA,
    WECHAT_SECRET,
    WECHAT_TEMPLATE,
    ManualClock,
    aliyun_channel,
    tencent_channel,
    wechat_channel,
)

from tests.fakes.aliyun_sms import FakeAliyunSms
from tests.fakes.tencent_sms import FakeTencentSms
from tests.fakes.wechat import FakeWeChat


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def aliyun_fake(clock):
    fake = FakeAliyunSms(
        access_keys={ALIYUN_KEY_ID: ALIYUN_SECRET},
        sign_names={"县医共体"},
        templates={ALIYUN_TEMPLATE: ["hospital", "time"]},
        blacklist={"13900000000"},
        clock=clock,
        stall_seconds=1.5,
    )
    async with fake:
        yield fake


@pytest.fixture
async def aliyun(aliyun_fake):
    channel = aliyun_channel(aliyun_fake)
    yield channel
    await channel.aclose()


@pytest.fixture
async def tencent_fake(clock):
    fake = FakeTencentSms(
        secrets={TENCENT_ID: TENCENT_KEY},
        sdk_app_id="1400006666",
        sign_names={"县医共体"},
        templates={TENCENT_TEMPLATE: 2},
        blacklist={"13900000000"},
        clock=clock,
        stall_seconds=1.5,
    )
    async with fake:
        yield fake


@pytest.fixture
async def tencent(tencent_fake):
    channel = tencent_channel(tencent_fake)
    yield channel
    await channel.aclose()


@pytest.fixture
async def wechat_fake(clock):
    fake = FakeWeChat(
        appid=WECHAT_APPID, appsecret=WECHAT_SECRET,
        templates={WECHAT_TEMPLATE: list(WECHAT_DATA)}, clock=clock, stall_seconds=1.5,
    )
    async with fake:
        yield fake


@pytest.fixture
async def wechat(wechat_fake):
    channel = wechat_channel(wechat_fake)
    yield channel
    await channel.aclose()
