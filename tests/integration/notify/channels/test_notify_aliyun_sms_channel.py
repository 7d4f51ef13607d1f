"""The Aliyun SendSms client against a fake that verifies what Aliyun verifies."""

from __future__ import annotations

import json

import pytest
from notify_channels_support import ALIYUN_TEMPLATE, PHONE, aliyun_channel

from services.notify.adapters.channels import SendStatus, SmsMessage
from services.notify.adapters.channels.aliyun_sms import ALIYUN_CODES, sign
from tests.fakes import HTTP_503, STALL
from tests.fakes.aliyun_sms import expected_signature

PARAMS = {"hospital": "县人民医院", "time": "3月18日上午"}


def message(phone: str = PHONE, **changes) -> SmsMessage:
    return SmsMessage(**{"phone": phone, "template_code": ALIYUN_TEMPLATE, "params": PARAMS,
                         "correlation_id": "dlv-0001", **changes})


# Alibaba Cloud's published signature example (DescribeRegions, key secret "testsecret").
DOC_EXAMPLE = {
    "TimeStamp": "2016-02-23T12:46:24Z", "Format": "XML", "AccessKeyId": "testid",
    "Action": "DescribeRegions", "SignatureMethod": "HMAC-SHA1",
    "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf", "Version": "2014-05-26", "SignatureVersion": "1.0",
}


def test_client_and_fake_both_reproduce_the_documented_signature():
    assert sign(DOC_EXAMPLE, "testsecret", "GET") == "CT9X0VtwR86fNWSnsc6v8YGOjuE="
    assert expected_signature(DOC_EXAMPLE, "testsecret", "GET") == "CT9X0VtwR86fNWSnsc6v8YGOjuE="


async def test_send_succeeds_with_string_params_and_out_id(aliyun, aliyun_fake):
    outcome = await aliyun.send(message())

    assert outcome.status is SendStatus.SENT and outcome.vendor_code == "OK"
    [record] = aliyun_fake.accepted
    assert outcome.vendor_message_id == record["biz_id"]
    assert record["phone"] == PHONE and record["out_id"] == "dlv-0001" and record["sign_name"] == "县医共体"
    assert json.loads(record["raw"]["TemplateParam"]) == PARAMS
    assert record["raw"]["Version"] == "2017-05-25" and record["raw"]["Action"] == "SendSms"


async def test_wrong_secret_is_rejected_by_the_signature_check(aliyun_fake):
    channel = aliyun_channel(aliyun_fake, access_key_secret="not-the-secret")
    try:
        outcome = await channel.send(message())
    finally:
        await channel.aclose()
    assert (outcome.status, outcome.vendor_code) == (SendStatus.PERMANENT, "SignatureDoesNotMatch")
    assert aliyun_fake.accepted == []


async def test_stale_timestamp_is_rejected_and_retryable(aliyun_fake, clock):
    channel = aliyun_channel(aliyun_fake, clock=lambda: clock() - 16 * 60)
    try:
        outcome = await channel.send(message())
    finally:
        await channel.aclose()
    assert (outcome.status, outcome.vendor_code) == (SendStatus.RETRYABLE, "InvalidTimeStamp.Expired")


async def test_reused_nonce_is_rejected(aliyun_fake):
    channel = aliyun_channel(aliyun_fake, nonce=lambda: "fixed-nonce")
    try:
        first = await channel.send(message())
        second = await channel.send(message())
    finally:
        await channel.aclose()
    assert first.sent
    assert (second.status, second.vendor_code) == (SendStatus.RETRYABLE, "SignatureNonceUsed")


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        (message(phone="1381234567"), "isv.MOBILE_NUMBER_ILLEGAL"),
        (message(phone="+85261234567"), "isv.MOBILE_NUMBER_ILLEGAL"),
        (message(template_code="SMS_000"), "isv.SMS_TEMPLATE_ILLEGAL"),
        (message(params={"hospital": "县人民医院"}), "isv.TEMPLATE_MISSING_PARAMETERS"),
        (message(params={"hospital": "院" * 36, "time": "上午"}), "isv.PARAM_LENGTH_LIMIT"),
        (message(phone="13900000000"), "isv.BLACK_KEY_CONTROL_LIMIT"),
    ],
)
async def test_field_limits_are_enforced_by_the_fake_and_permanent(aliyun, aliyun_fake, msg, code):
    outcome = await aliyun.send(msg)
    assert (outcome.status, outcome.vendor_code) == (SendStatus.PERMANENT, code)
    assert aliyun_fake.accepted == []


async def test_per_number_flow_control_is_retryable(aliyun_fake):
    aliyun_fake.rate.windows = [(60, 1, "isv.BUSINESS_LIMIT_CONTROL")]
    channel = aliyun_channel(aliyun_fake)
    try:
        first, second = await channel.send(message()), await channel.send(message())
        other = await channel.send(message(phone="13812340000"))
        aliyun_fake.clock.advance(61)
        later = await channel.send(message())
    finally:
        await channel.aclose()
    assert first.sent and other.sent and later.sent
    assert (second.status, second.vendor_code) == (SendStatus.RETRYABLE, "isv.BUSINESS_LIMIT_CONTROL")


@pytest.mark.parametrize(
    ("scripted", "status", "code"),
    [
        ("isp.SYSTEM_ERROR", SendStatus.RETRYABLE, "isp.SYSTEM_ERROR"),
        ("Throttling.User", SendStatus.RETRYABLE, "Throttling.User"),
        ("isv.DAY_LIMIT_CONTROL", SendStatus.RETRYABLE, "isv.DAY_LIMIT_CONTROL"),
        ("isv.SMS_SIGNATURE_ILLEGAL", SendStatus.PERMANENT, "isv.SMS_SIGNATURE_ILLEGAL"),
        ("isv.OUT_OF_SERVICE", SendStatus.PERMANENT, "isv.OUT_OF_SERVICE"),
        (HTTP_503, SendStatus.RETRYABLE, "HTTP_503"),
        (STALL, SendStatus.RETRYABLE, "TIMEOUT"),
    ],
)
async def test_failure_classes(aliyun, aliyun_fake, scripted, status, code):
    aliyun_fake.fail_next(scripted)
    outcome = await aliyun.send(message())
    assert (outcome.status, outcome.vendor_code) == (status, code)
    assert (await aliyun.send(message())).sent  # the script is spent; the vendor works again


async def test_fail_next_times(aliyun, aliyun_fake):
    aliyun_fake.fail_next("isp.SYSTEM_ERROR", times=2)
    outcomes = [await aliyun.send(message()) for _ in range(3)]
    assert [o.status for o in outcomes] == [SendStatus.RETRYABLE, SendStatus.RETRYABLE, SendStatus.SENT]


async def test_unreachable_endpoint_is_retryable(aliyun_fake):
    channel = aliyun_channel(aliyun_fake, endpoint="http://127.0.0.1:9")
    try:
        outcome = await channel.send(message())
    finally:
        await channel.aclose()
    assert (outcome.status, outcome.vendor_code) == (SendStatus.RETRYABLE, "NETWORK")


def test_every_code_the_fake_can_answer_is_in_the_table():
    fake_codes = {"SignatureDoesNotMatch", "InvalidTimeStamp.Expired", "SignatureNonceUsed",
                  "InvalidAccessKeyId.NotFound", "isv.MOBILE_NUMBER_ILLEGAL", "isv.SMS_SIGNATURE_ILLEGAL",
                  "isv.SMS_TEMPLATE_ILLEGAL", "isv.INVALID_JSON_PARAM", "isv.TEMPLATE_MISSING_PARAMETERS",
                  "isv.PARAM_LENGTH_LIMIT", "isv.BLACK_KEY_CONTROL_LIMIT", "isv.BUSINESS_LIMIT_CONTROL"}
    assert fake_codes <= ALIYUN_CODES.keys()
