"""Tencent Cloud SMS ``SendSms`` and ``PullSmsSendStatusByPhoneNumber`` (API 3.0, version
2021-01-11, TC3-HMAC-SHA256).

Tencent's status callback does not echo ``SessionContext`` (see receipts), so a send whose
answer was lost cannot be matched to its receipt. The status pull for one number does carry
each message's ``SessionContext``: ``find_report`` looks for ours there (once the carrier has
reported). Tencent returns ``SessionContext`` in pulled statuses only once its SMS support has
enabled it for the account; until then the pull finds nothing and a warning says so.

Signature v3, as documented:
  CanonicalRequest = "POST\\n/\\n\\n" + canonical headers + "\\n" + signed headers + "\\n" + hex(sha256(body))
  StringToSign     = "TC3-HMAC-SHA256\\n" + timestamp + "\\n" + date/service/tc3_request + "\\n" + hex(sha256(CR))
  key chain        = HMAC("TC3" + SecretKey, date) -> service -> "tc3_request"
  Authorization    = "TC3-HMAC-SHA256 Credential=<id>/<scope>, SignedHeaders=<h>, Signature=<hex>"
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from .base import (
    Clock,
    HttpTimeouts,
    SendOutcome,
    SendReport,
    SendStatus,
    SmsChannelBase,
    SmsMessage,
    StatusQueryFailed,
    classify,
    http_status_outcome,
    json_or_none,
    mask_phone,
    normalize_cn_mobile,
    system_clock,
)

API_VERSION = "2021-01-11"
ALGORITHM = "TC3-HMAC-SHA256"
CONTENT_TYPE = "application/json; charset=utf-8"
PULL_ACTION = "PullSmsSendStatusByPhoneNumber"
# The most statuses one pull returns; Offset is fixed at 0, so there is no next page.
PULL_LIMIT = 100
# Tencent signs requests from clocks up to five minutes off its own: the send's time by our
# clock may be that far from Tencent's record of it, so the pull looks back that much further.
CLOCK_SKEW_SECONDS = 300

R, P = SendStatus.RETRYABLE, SendStatus.PERMANENT

# Request-level Error.Code and per-number SendStatusSet[].Code share one namespace.
TENCENT_CODES: Mapping[str, SendStatus] = {
    "Ok": SendStatus.SENT,
    # rate limits: the per-number windows open again by themselves
    "LimitExceeded.PhoneNumberThirtySecondLimit": R,
    "LimitExceeded.PhoneNumberOneHourLimit": R,
    "LimitExceeded.PhoneNumberDailyLimit": R,
    "LimitExceeded.PhoneNumberSameContentDailyLimit": R,
    "LimitExceeded.DeliveryFrequencyLimit": R,
    "LimitExceeded.AppDailyLimit": R,
    "LimitExceeded.AppMainlandChinaDailyLimit": R,
    "RequestLimitExceeded": R,
    "RequestLimitExceeded.GlobalRegionUinLimitExceeded": R,
    "RequestLimitExceeded.IPLimitExceeded": R,
    "RequestLimitExceeded.UinLimitExceeded": R,
    # vendor-side or transient
    "InternalError": R,
    "InternalError.Timeout": R,
    "InternalError.OtherError": R,
    "InternalError.SendAndRecvFail": R,
    "InternalError.RequestTimeException": R,
    "InternalError.SigVerificationFail": R,
    "InternalError.SigFieldMissing": R,
    "AuthFailure.SignatureExpire": R,  # the next attempt signs with the current time
    # the request or the account is wrong
    "AuthFailure.SignatureFailure": P,
    "AuthFailure.SecretIdNotFound": P,
    "AuthFailure.InvalidSecretId": P,
    "AuthFailure.InvalidAuthorization": P,
    "AuthFailure.UnauthorizedOperation": P,
    "InvalidParameterValue.IncorrectPhoneNumber": P,
    "InvalidParameterValue.TemplateParameterFormatError": P,
    "InvalidParameterValue.TemplateParameterLengthLimit": P,
    "InvalidParameterValue.ProhibitedUseUrlInTemplateParameter": P,
    "InvalidParameterValue.ContentLengthLimit": P,
    "InvalidParameterValue.SdkAppIdNotExist": P,
    "InvalidParameterValue.SignNameLengthTooLong": P,
    "InvalidParameter": P,
    "InvalidParameterValue": P,
    "MissingParameter": P,
    "MissingParameter.EmptyPhoneNumberSet": P,
    "LimitExceeded.PhoneNumberCountLimit": P,
    "FailedOperation.TemplateIncorrectOrUnapproved": P,
    "FailedOperation.TemplateUnapprovedOrNotExist": P,
    "FailedOperation.SignatureIncorrectOrUnapproved": P,
    "FailedOperation.PhoneNumberInBlacklist": P,
    "FailedOperation.ContainSensitiveWord": P,
    "FailedOperation.InsufficientBalanceInSmsPackage": P,
    "FailedOperation.JsonParseFail": P,
    "FailedOperation.FailResolvePacket": P,
    "UnauthorizedOperation.SmsSdkAppIdVerifyFail": P,
    "UnauthorizedOperation.RequestIpNotInWhitelist": P,
    "UnauthorizedOperation.RequestPermissionDeny": P,
    "UnauthorizedOperation.SdkAppIdIsDisabled": P,
    "UnauthorizedOperation.ServiceSuspendDueToArrears": P,
    "UnauthorizedOperation.IndividualUserMarketingSmsPermissionDeny": P,
}


def _unlisted(code: str) -> SendStatus:
    return R if code.startswith(("InternalError", "RequestLimitExceeded", "LimitExceeded.PhoneNumber")) else P


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def tc3_authorization(
    *,
    secret_id: str,
    secret_key: str,
    service: str,
    host: str,
    action: str,
    timestamp: int,
    payload: bytes,
) -> str:
    date = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")
    signed_headers = "content-type;host;x-tc-action"
    canonical_headers = f"content-type:{CONTENT_TYPE}\nhost:{host}\nx-tc-action:{action.lower()}\n"
    canonical_request = "\n".join(
        ["POST", "/", "", canonical_headers, signed_headers, hashlib.sha256(payload).hexdigest()]
    )
    scope = f"{date}/{service}/tc3_request"
    string_to_sign = "\n".join(
        [ALGORITHM, str(timestamp), scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = _hmac(_hmac(_hmac(f"TC3{secret_key}".encode(), date), service), "tc3_request")
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{ALGORITHM} Credential={secret_id}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"


def e164(phone: str) -> str:
    return f"+86{normalize_cn_mobile(phone)}"


def report_in(statuses: Iterable[object], correlation_id: str) -> SendReport | None:
    """The pulled status of the message sent with ``correlation_id``, if any; one that says
    delivered wins over one that does not (the same message may be reported twice)."""
    ours = [s for s in statuses
            if isinstance(s, dict) and s.get("SessionContext") == correlation_id and s.get("SerialNo")]
    if not ours:
        return None
    best = max(ours, key=lambda s: str(s.get("ReportStatus", "")).upper() == "SUCCESS")
    return SendReport(vendor_message_id=str(best["SerialNo"]),
                      delivered=str(best.get("ReportStatus", "")).upper() == "SUCCESS",
                      code=str(best.get("Description") or best.get("ReportStatus") or ""))


def _answer(response: httpx.Response) -> dict | SendOutcome:
    """The ``Response`` object of an API 3.0 answer, or the outcome its failure stands for."""
    body = json_or_none(response)
    inner = body.get("Response") if isinstance(body, dict) else None
    if not isinstance(inner, dict):
        return http_status_outcome(response)
    error = inner.get("Error")
    if isinstance(error, dict):
        code = str(error.get("Code", "InternalError"))
        return SendOutcome(classify(TENCENT_CODES, code, _unlisted), code, detail=str(error.get("Message", "")))
    return inner


class TencentSmsChannel(SmsChannelBase):
    name = "tencent_sms"

    def __init__(
        self,
        *,
        endpoint: str,
        secret_id: str,
        secret_key: str,
        sdk_app_id: str,
        sign_name: str,
        region: str = "ap-guangzhou",
        service: str = "sms",
        http_client: httpx.AsyncClient | None = None,
        timeouts: HttpTimeouts | None = None,
        clock: Clock = system_clock,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(endpoint, http_client=http_client, timeouts=timeouts, logger=logger)
        self._secret_id = secret_id
        self._secret_key = secret_key
        self._app_id = sdk_app_id
        self._sign_name = sign_name
        self._region = region
        # The service name is part of the credential scope; it cannot be taken from a
        # loopback or proxy host, so it is configured rather than derived.
        self._service = service
        self._host = urlsplit(endpoint).netloc
        self._clock = clock

    def signed_request(self, message: SmsMessage) -> tuple[dict[str, str], bytes]:
        body = {
            "PhoneNumberSet": [e164(message.phone)],
            "SmsSdkAppId": self._app_id,
            "SignName": self._sign_name,
            "TemplateId": message.template_code,
            "TemplateParamSet": [str(v) for v in message.params.values()],
        }
        if message.correlation_id:
            body["SessionContext"] = message.correlation_id
        return self._signed("SendSms", body)

    def _signed(self, action: str, body: dict[str, Any]) -> tuple[dict[str, str], bytes]:
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        timestamp = int(self._clock())
        headers = {
            "Authorization": tc3_authorization(
                secret_id=self._secret_id, secret_key=self._secret_key, service=self._service,
                host=self._host, action=action, timestamp=timestamp, payload=payload,
            ),
            "Content-Type": CONTENT_TYPE,
            "Host": self._host,
            "X-TC-Action": action,
            "X-TC-Timestamp": str(timestamp),
            "X-TC-Version": API_VERSION,
            "X-TC-Region": self._region,
        }
        return headers, payload

    def _request_kwargs(self, message: SmsMessage) -> dict[str, Any]:
        headers, payload = self.signed_request(message)
        return {"content": payload, "headers": headers}

    async def find_report(self, phone: str, correlation_id: str, sent_after: datetime) -> SendReport | None:
        # No EndTime: a status Tencent stamped later than our clock's now would be cut off.
        headers, payload = self._signed(PULL_ACTION, {
            "BeginTime": int(sent_after.timestamp()) - CLOCK_SKEW_SECONDS, "Offset": 0, "Limit": PULL_LIMIT,
            "PhoneNumber": e164(phone), "SmsSdkAppId": self._app_id,
        })
        response = await self._request("POST", "/", content=payload, headers=headers)
        inner = response if isinstance(response, SendOutcome) else _answer(response)
        if isinstance(inner, SendOutcome):
            raise StatusQueryFailed(inner)
        statuses = inner.get("PullSmsSendStatusSet") or []
        report = report_in(statuses, correlation_id)
        if report is None and len(statuses) >= PULL_LIMIT:
            # Ours may be beyond the page, and no later page can be asked for.
            raise StatusQueryFailed(SendOutcome(R, "PULL_FULL",
                                                detail=f"{len(statuses)} statuses, ours not among them"))
        if report is None and statuses and not any(isinstance(s, dict) and s.get("SessionContext") for s in statuses):
            self._log.warning("%s %s: none of %d statuses carries a SessionContext; unless Tencent's SMS support has "
                              "enabled it for the account, a send whose answer was lost is sent again",
                              self.name, PULL_ACTION, len(statuses))
        self._log.info("%s %s phone=%s ref=%s statuses=%d found=%s", self.name, PULL_ACTION, mask_phone(phone),
                       correlation_id, len(statuses), report is not None)
        return report

    @staticmethod
    def _classify(response: httpx.Response) -> SendOutcome:
        inner = _answer(response)
        if isinstance(inner, SendOutcome):
            return inner
        statuses = inner.get("SendStatusSet") or []
        if not statuses:
            return SendOutcome(R, "EMPTY_SEND_STATUS", detail="no per-number status in the answer")
        first = statuses[0]
        code = str(first.get("Code", ""))
        return SendOutcome(
            classify(TENCENT_CODES, code, _unlisted), code, first.get("SerialNo") or None, str(first.get("Message", ""))
        )
