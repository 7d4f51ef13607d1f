"""The WeChat subscribe-message client: token cache, refresh, value limits, outcomes."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from notify_channels_support import OPENID, OPENID_2, WECHAT_DATA, WECHAT_TEMPLATE, wechat_channel

from services.notify.adapters.channels import SendStatus, WeChatMessage, WeChatTarget, validate_subscribe_data
from tests.fakes import HTTP_503, STALL


def message(openid: str = OPENID, **data_changes: str) -> WeChatMessage:
    return WeChatMessage(openid=openid, template_id=WECHAT_TEMPLATE, data={**WECHAT_DATA, **data_changes},
                         page="pages/referral/detail?id=42", correlation_id="dlv-0003")


async def test_mini_program_send_succeeds(wechat, wechat_fake):
    outcome = await wechat.send(message())

    assert (outcome.status, outcome.vendor_code) == (SendStatus.SENT, "0")
    [record] = wechat_fake.accepted
    assert record["endpoint"] == "send" and record["data"] == WECHAT_DATA
    assert record["page"] == "pages/referral/detail?id=42" and record["miniprogram_state"] == "formal"
    assert outcome.vendor_message_id == str(record["msgid"])


async def test_official_account_uses_bizsend(wechat_fake):
    channel = wechat_channel(wechat_fake, target=WeChatTarget.OFFICIAL_ACCOUNT, miniprogram_state=None)
    try:
        msg = WeChatMessage(openid=OPENID, template_id=WECHAT_TEMPLATE, data=WECHAT_DATA,
                            page="pages/index", miniprogram_appid="wxmini0000000001")
        outcome = await channel.send(msg)
    finally:
        await channel.aclose()
    assert outcome.sent
    [record] = wechat_fake.accepted
    assert record["endpoint"] == "bizsend"
    assert record["miniprogram"] == {"appid": "wxmini0000000001", "pagepath": "pages/index"}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("thing1", "县人民医院心血管内科专家门诊预约成功请准时"),  # 21 characters
        ("phrase3", "已经成功预约"),  # 6 Chinese characters
        ("phrase3", "ok"),
        ("time2", "25:00"),
        ("time2", "2025年2月30日 09:30"),
        ("character_string4", "编号42"),
        ("name5", "张三李四王五赵六钱七孙"),  # 11 Chinese characters
        ("thing1", ""),
    ],
)
async def test_value_limits_are_rejected_before_calling_wechat(wechat, wechat_fake, key, value):
    outcome = await wechat.send(message(**{key: value}))

    assert (outcome.status, outcome.vendor_code) == (SendStatus.PERMANENT, "VALIDATION")
    assert key in outcome.detail
    assert wechat_fake.request_count == 0  # not even a token fetch


@pytest.mark.parametrize(
    ("data", "ok"),
    [
        ({"time1": "15:01", "date2": "2019年10月1日", "date3": "2019-12-25 09:42"}, True),
        ({"time1": "2019年10月1日 15:01~17:00", "date2": "2019年10月1日~2019年10月3日"}, True),
        ({"amount1": "¥128.50", "amount2": "30元", "amount3": "¥12345678901"}, False),
        ({"number1": "3.5", "letter2": "ABC", "symbol3": "%", "phone_number4": "+86-0766-66888866"}, True),
        ({"car_number1": "粤A8Z888挂", "name2": "Zhang San", "enum3": "A"}, True),
        ({"car_number1": "粤A8Z8888挂"}, False),
        ({"symbol1": "a"}, False),
        ({"letter1": "abc1"}, False),
        ({"number1": "12a"}, False),
        ({"unknown1": "x"}, False),
    ],
)
def test_value_table(data, ok):
    assert (validate_subscribe_data(data) == []) is ok


async def test_fake_enforces_the_limits_on_its_own(wechat_fake):
    """A client that skipped validation would still be refused, with WeChat's 47003."""
    async with httpx.AsyncClient(base_url=wechat_fake.base_url) as http:
        token = (await http.post("/cgi-bin/stable_token", json={
            "grant_type": "client_credential", "appid": wechat_fake.appid, "secret": wechat_fake.appsecret,
        })).json()["access_token"]
        data = {k: {"value": v} for k, v in {**WECHAT_DATA, "phrase3": "已经成功预约"}.items()}
        answer = (await http.post("/cgi-bin/message/subscribe/send", params={"access_token": token},
                                  json={"touser": OPENID, "template_id": WECHAT_TEMPLATE, "data": data})).json()
    assert answer["errcode"] == 47003 and "phrase3" in answer["errmsg"]


async def test_token_is_fetched_once_for_concurrent_sends(wechat, wechat_fake):
    outcomes = await asyncio.gather(*(wechat.send(message()) for _ in range(20)))

    assert all(o.sent for o in outcomes)
    assert wechat_fake.token_requests == 1
    assert wechat.tokens.fetches == 1


async def test_token_is_reused_until_its_refresh_time(wechat, wechat_fake):
    await wechat.send(message())
    wechat_fake.clock.advance(7200 - 301)
    await wechat.send(message())
    assert wechat_fake.token_requests == 1
    wechat_fake.clock.advance(2)  # inside WeChat's 5-minute rotation window
    assert (await wechat.send(message())).sent
    assert wechat_fake.token_requests == 2


async def test_expired_token_42001_is_refreshed_and_the_send_retried_once(wechat, wechat_fake):
    await wechat.send(message())
    wechat_fake.expire_token()

    outcome = await wechat.send(message())

    assert outcome.sent
    assert wechat_fake.token_requests == 2 and wechat_fake.forced_refreshes == 0
    assert [code for code, _ in wechat_fake.rejected] == ["42001"]


async def test_replaced_token_40001_is_refreshed_for_all_waiting_sends(wechat, wechat_fake):
    await wechat.send(message())
    wechat_fake.rotate_token()

    outcomes = await asyncio.gather(*(wechat.send(message()) for _ in range(10)))

    assert all(o.sent for o in outcomes)
    assert wechat_fake.token_requests == 2  # one refresh shared by every rejected send
    assert wechat.tokens.fetches == 2


async def test_rejected_token_that_normal_mode_returns_again_is_force_refreshed(wechat, wechat_fake):
    await wechat.send(message())
    wechat_fake.fail_next(40014)  # WeChat rejects a token its stable_token still hands out

    outcome = await wechat.send(message())

    assert outcome.sent
    assert wechat_fake.forced_refreshes == 1


async def test_second_token_rejection_is_retryable_not_a_loop(wechat, wechat_fake):
    await wechat.send(message())
    wechat_fake.fail_next(42001, times=3)

    outcome = await wechat.send(message())

    assert (outcome.status, outcome.vendor_code) == (SendStatus.RETRYABLE, "42001")
    assert wechat_fake.request_count <= 6


async def test_wrong_app_secret_is_permanent(wechat_fake):
    channel = wechat_channel(wechat_fake, appsecret="wrong")
    try:
        outcome = await channel.send(message())
    finally:
        await channel.aclose()
    assert (outcome.status, outcome.vendor_code) == (SendStatus.PERMANENT, "40125")


async def test_token_endpoint_busy_is_retryable(wechat, wechat_fake):
    wechat_fake.fail_next_token(-1)
    outcome = await wechat.send(message())
    assert (outcome.status, outcome.vendor_code) == (SendStatus.RETRYABLE, "-1")
    assert (await wechat.send(message())).sent


async def test_user_refusal_is_its_own_class(wechat, wechat_fake):
    wechat_fake.refused.add(OPENID)
    outcome = await wechat.send(message())
    assert (outcome.status, outcome.vendor_code) == (SendStatus.USER_REFUSED, "43101")
    assert (await wechat.send(message(OPENID_2))).sent


async def test_per_user_rate_limit_is_retryable(wechat, wechat_fake):
    wechat_fake.rate.windows = [(60, 2, "45009")]
    outcomes = [await wechat.send(message()) for _ in range(3)]
    assert [o.status for o in outcomes] == [SendStatus.SENT, SendStatus.SENT, SendStatus.RETRYABLE]
    assert outcomes[-1].vendor_code == "45009"


@pytest.mark.parametrize(
    ("scripted", "status"),
    [
        (-1, SendStatus.RETRYABLE),
        (45009, SendStatus.RETRYABLE),
        (40003, SendStatus.PERMANENT),
        (40037, SendStatus.PERMANENT),
        (47003, SendStatus.PERMANENT),
        (41030, SendStatus.PERMANENT),
        (43101, SendStatus.USER_REFUSED),
        (HTTP_503, SendStatus.RETRYABLE),
        (STALL, SendStatus.RETRYABLE),
    ],
)
async def test_failure_classes(wechat, wechat_fake, scripted, status):
    await wechat.send(message())  # token in hand, so the script hits the send
    wechat_fake.fail_next(scripted)
    assert (await wechat.send(message())).status is status


async def test_bad_openid_and_unknown_template_are_refused_by_the_fake(wechat, wechat_fake):
    bad_openid = await wechat.send(message(openid="short"))
    unknown = await wechat.send(WeChatMessage(openid=OPENID, template_id="nope", data=WECHAT_DATA))
    assert (bad_openid.status, bad_openid.vendor_code) == (SendStatus.PERMANENT, "40003")
    assert (unknown.status, unknown.vendor_code) == (SendStatus.PERMANENT, "40037")
