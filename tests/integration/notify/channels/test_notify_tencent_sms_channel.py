"""The Tencent SendSms client against a fake that verifies TC3 signatures as Tencent does."""

from __future__ import annotations

import pytest
from notify_channels_support import PHONE, TENCENT_TEMPLATE, tencent_channel

from services.notify.adapters.channels import SendStatus, SmsMessage
from services.notify.adapters.channels.tencent_sms import TENCENT_CODES
from tests.fakes import HTTP_503, STALL


def message(phone: str = PHONE, **changes) -> SmsMessage:
    params = {"hospital": "县人民医院", "time": "3月18日上午"}
    return SmsMessage(**{"phone": phone, "template_code": TENCENT_TEMPLATE, "params": params,
                         "correlation_id": "dlv-0002", **changes})


async def test_send_succeeds_with_e164_number_and_session_context(tencent, tencent_fake):
    outcome = await tencent.send(message())

    assert (outcome.status, outcome.vendor_code) == (SendStatus.SENT, "Ok")
    [record] = tencent_fake.accepted
    assert outcome.vendor_message_id == record["serial_no"]
    assert record["phone"] == PHONE and record["session_context"] == "dlv-0002"
    assert record["params"] == ["县人民医院", "3月18日上午"]  # positional, in template order


async def test_wrong_secret_key_fails_the_signature_check(tencent_fake):
    channel = tencent_channel(tencent_fake, secret_key="not-the-key")
    try:
        outcome = await channel.send(message())
    finally:
        await channel.aclose()
    assert (outcome.status, outcome.vendor_code) == (SendStatus.PERMANENT, "AuthFailure.SignatureFailure")
    assert tencent_fake.accepted == []


async def test_unknown_secret_id_and_wrong_service_scope(tencent_fake):
    unknown = tencent_channel(tencent_fake, secret_id="AKIDunknown")
    wrong_scope = tencent_channel(tencent_fake, service="cvm")
    try:
        first, second = await unknown.send(message()), await wrong_scope.send(message())
    finally:
        await unknown.aclose()
        await wrong_scope.aclose()
    assert (first.status, first.vendor_code) == (SendStatus.PERMANENT, "AuthFailure.SecretIdNotFound")
    assert (second.status, second.vendor_code) == (SendStatus.PERMANENT, "AuthFailure.SignatureFailure")


async def test_stale_timestamp_is_rejected_and_retryable(tencent_fake, clock):
    channel = tencent_channel(tencent_fake, clock=lambda: clock() - 301)
    try:
        outcome = await channel.send(message())
    finally:
        await channel.aclose()
    assert (outcome.status, outcome.vendor_code) == (SendStatus.RETRYABLE, "AuthFailure.SignatureExpire")


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        (message(phone="123"), "InvalidParameterValue.IncorrectPhoneNumber"),
        (message(phone="13900000000"), "FailedOperation.PhoneNumberInBlacklist"),
        (message(template_code="999"), "FailedOperation.TemplateIncorrectOrUnapproved"),
        (message(params={"hospital": "县人民医院"}), "FailedOperation.TemplateIncorrectOrUnapproved"),
        (message(params={"hospital": "某某县第一人民医院心血管内科", "time": "上午"}),
         "InvalidParameterValue.TemplateParameterLengthLimit"),
    ],
)
async def test_field_limits_are_enforced_by_the_fake_and_permanent(tencent, tencent_fake, msg, code):
    outcome = await tencent.send(msg)
    assert (outcome.status, outcome.vendor_code) == (SendStatus.PERMANENT, code)
    assert tencent_fake.accepted == []


async def test_per_number_thirty_second_limit_is_retryable(tencent, tencent_fake):
    first, second = await tencent.send(message()), await tencent.send(message())
    tencent_fake.clock.advance(31)
    third = await tencent.send(message())
    assert first.sent and third.sent
    assert (second.status, second.vendor_code) == (SendStatus.RETRYABLE, "LimitExceeded.PhoneNumberThirtySecondLimit")


@pytest.mark.parametrize(
    ("scripted", "status", "code"),
    [
        ("InternalError.Timeout", SendStatus.RETRYABLE, "InternalError.Timeout"),
        ("RequestLimitExceeded", SendStatus.RETRYABLE, "RequestLimitExceeded"),
        ("LimitExceeded.PhoneNumberDailyLimit", SendStatus.RETRYABLE, "LimitExceeded.PhoneNumberDailyLimit"),
        ("FailedOperation.InsufficientBalanceInSmsPackage", SendStatus.PERMANENT,
         "FailedOperation.InsufficientBalanceInSmsPackage"),
        ("UnauthorizedOperation.SmsSdkAppIdVerifyFail", SendStatus.PERMANENT,
         "UnauthorizedOperation.SmsSdkAppIdVerifyFail"),
        (HTTP_503, SendStatus.RETRYABLE, "HTTP_503"),
        (STALL, SendStatus.RETRYABLE, "TIMEOUT"),
    ],
)
async def test_failure_classes(tencent, tencent_fake, scripted, status, code):
    tencent_fake.fail_next(scripted)
    outcome = await tencent.send(message())
    assert (outcome.status, outcome.vendor_code) == (status, code)


def test_every_code_the_fake_can_answer_is_in_the_table():
    fake_codes = {"AuthFailure.SignatureFailure", "AuthFailure.SignatureExpire", "AuthFailure.SecretIdNotFound",
                  "AuthFailure.InvalidAuthorization", "InvalidParameterValue.SdkAppIdNotExist",
                  "FailedOperation.SignatureIncorrectOrUnapproved", "FailedOperation.TemplateIncorrectOrUnapproved",
                  "InvalidParameterValue.TemplateParameterLengthLimit", "MissingParameter.EmptyPhoneNumberSet",
                  "LimitExceeded.PhoneNumberCountLimit", "InvalidParameterValue.IncorrectPhoneNumber",
                  "FailedOperation.PhoneNumberInBlacklist", "LimitExceeded.PhoneNumberThirtySecondLimit",
                  "LimitExceeded.PhoneNumberOneHourLimit", "LimitExceeded.PhoneNumberDailyLimit",
                  "FailedOperation.JsonParseFail"}
    assert fake_codes <= TENCENT_CODES.keys()
