"""The Tencent SendSms client against a fake that verifies TC3 signatures as Tencent does."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from notify_channels_support import PHONE, TENCENT_TEMPLATE, tencent_channel

from services.notify.adapters.channels import SendReport, SendStatus, SmsMessage, StatusQueryFailed
from services.notify.adapters.channels.tencent_sms import PULL_ACTION, TENCENT_CODES
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


# -- a send whose answer was lost, and the status pull that settles it ------------------


async def test_an_answer_dropped_after_the_message_was_taken_may_have_been_sent(tencent, tencent_fake):
    tencent_fake.drop_answer()
    outcome = await tencent.send(message())
    assert (outcome.status, outcome.vendor_code, outcome.maybe_sent) == (SendStatus.RETRYABLE, "NETWORK", True)
    assert len(tencent_fake.accepted) == 1


async def test_a_late_answer_may_have_been_sent_a_refused_connection_not(tencent, tencent_fake):
    tencent_fake.answer_late()
    late = await tencent.send(message())
    port = tencent_fake.base_url.rsplit(":", 1)[1]
    await tencent_fake.stop()
    refused = tencent_channel(tencent_fake, endpoint=f"http://127.0.0.1:{port}")
    try:
        unreachable = await refused.send(message())
    finally:
        await refused.aclose()
    assert (late.vendor_code, late.maybe_sent) == ("TIMEOUT", True)
    assert (unreachable.vendor_code, unreachable.maybe_sent) == ("NETWORK", False)


async def test_the_status_pull_finds_a_taken_message_once_the_carrier_reported_it(tencent, tencent_fake, clock):
    since = datetime.fromtimestamp(clock(), UTC)
    sent = await tencent.send(message(correlation_id="dlv-0003"))
    await tencent.send(message(phone="13800000001", correlation_id="dlv-0004"))  # another number
    assert await tencent.find_report(PHONE, "dlv-0003", since) is None  # no report yet
    clock.advance(tencent_fake.report_delay)
    report = await tencent.find_report(PHONE, "dlv-0003", since)
    assert report == SendReport(vendor_message_id=sent.vendor_message_id, delivered=True, code="DELIVRD")
    assert await tencent.find_report(PHONE, "dlv-0004", since) is None  # not this number's
    pull = tencent_fake.pulls[-1]
    assert pull["PhoneNumber"] == f"+86{PHONE}" and pull["BeginTime"] <= tencent_fake.accepted[0]["sent_at"]


async def test_the_status_pull_reports_a_message_that_did_not_reach_the_phone(tencent, tencent_fake, clock):
    since = datetime.fromtimestamp(clock(), UTC)
    tencent_fake.undelivered.add(PHONE)
    await tencent.send(message())
    clock.advance(tencent_fake.report_delay)
    report = await tencent.find_report(PHONE, "dlv-0002", since)
    assert (report.delivered, report.code) == (False, "UNDELIV")


async def test_without_session_context_in_pulled_statuses_nothing_is_found(tencent, tencent_fake, clock, caplog):
    since = datetime.fromtimestamp(clock(), UTC)
    tencent_fake.session_context_in_pulls = False
    await tencent.send(message())
    clock.advance(tencent_fake.report_delay)
    assert await tencent.find_report(PHONE, "dlv-0002", since) is None
    assert "carries a SessionContext" in caplog.text


@pytest.mark.parametrize(
    ("scripted", "code"),
    [("RequestLimitExceeded", "RequestLimitExceeded"), ("InternalError", "InternalError"),
     (HTTP_503, "HTTP_503"), (STALL, "TIMEOUT")],
)
async def test_a_failed_status_pull_raises_and_leaves_sends_alone(tencent, tencent_fake, clock, scripted, code):
    tencent_fake.fail_next(scripted, action="PullSmsSendStatusByPhoneNumber")
    with pytest.raises(StatusQueryFailed) as failed:
        await tencent.find_report(PHONE, "dlv-0002", datetime.fromtimestamp(clock(), UTC))
    assert failed.value.outcome.vendor_code == code
    assert (await tencent.send(message())).sent  # the scripted failure was the pull's only


async def test_the_status_pull_is_signed_like_a_send(tencent_fake, clock):
    channel = tencent_channel(tencent_fake, secret_key="not-the-key")
    try:
        with pytest.raises(StatusQueryFailed) as failed:
            await channel.find_report(PHONE, "dlv-0002", datetime.fromtimestamp(clock(), UTC))
    finally:
        await channel.aclose()
    assert failed.value.outcome.vendor_code == "AuthFailure.SignatureFailure"


async def test_the_fake_refuses_the_pull_parameters_of_the_older_api_version(tencent, tencent_fake, clock):
    """2019-07-11 called them SendDateTime and SmsSdkAppid; 2021-01-11 does not know them."""
    old = {"SendDateTime": int(clock()), "Offset": 0, "Limit": 10, "PhoneNumber": f"+86{PHONE}",
           "SmsSdkAppid": "1400006666"}
    headers, payload = tencent._signed(PULL_ACTION, old)
    async with httpx.AsyncClient() as http:
        answer = (await http.post(tencent_fake.base_url + "/", content=payload, headers=headers)).json()
    assert answer["Response"]["Error"]["Code"] == "UnknownParameter"
