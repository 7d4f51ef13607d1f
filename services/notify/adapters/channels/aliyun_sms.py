"""Alibaba Cloud SMS ``SendSms`` (API version 2017-05-25, RPC style, HMAC-SHA1 signature).

Signature (Alibaba Cloud "signature mechanism" for RPC APIs):
  canonical = "&".join(pe(k) + "=" + pe(v) for k, v in sorted(params))  # Signature excluded
  string_to_sign = "POST&" + pe("/") + "&" + pe(canonical)
  Signature = base64(HMAC-SHA1(AccessKeySecret + "&", string_to_sign))
where pe() is RFC 3986 percent-encoding over UTF-8 (A-Z a-z 0-9 - _ . ~ kept, space -> %20).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from .base import (
    Clock,
    HttpTimeouts,
    NonceSource,
    SendOutcome,
    SendStatus,
    SmsChannelBase,
    SmsMessage,
    classify,
    http_status_outcome,
    json_or_none,
    normalize_cn_mobile,
    system_clock,
    uuid_nonce,
)

API_VERSION = "2017-05-25"

R, P = SendStatus.RETRYABLE, SendStatus.PERMANENT

# Every code the SendSms and common-error pages document, in one place.
ALIYUN_CODES: Mapping[str, SendStatus] = {
    "OK": SendStatus.SENT,
    # vendor-side or transient
    "isp.SYSTEM_ERROR": R,
    "isv.BUSINESS_LIMIT_CONTROL": R,  # per-number flow control (e.g. 1/min, 5/h for codes)
    "isv.DAY_LIMIT_CONTROL": R,  # account daily cap; resets at midnight
    "Throttling": R,
    "Throttling.User": R,
    "Throttling.Api": R,
    "ServiceUnavailable": R,
    "InternalError": R,
    # a fresh attempt re-signs with a new timestamp and nonce
    "InvalidTimeStamp.Expired": R,
    "SignatureNonceUsed": R,
    # the request or the account is wrong: retrying sends the same wrong thing
    "isv.MOBILE_NUMBER_ILLEGAL": P,
    "isv.MOBILE_COUNT_OVER_LIMIT": P,
    "isv.SMS_TEMPLATE_ILLEGAL": P,
    "isv.SMS_SIGNATURE_ILLEGAL": P,
    "isv.SMS_SIGN_ILLEGAL": P,
    "isv.SIGN_STATE_ILLEGAL": P,
    "isv.SMS_SIGNATURE_SCENE_ILLEGAL": P,
    "isv.TEMPLATE_MISSING_PARAMETERS": P,
    "isv.TEMPLATE_PARAMS_ILLEGAL": P,
    "isv.INVALID_JSON_PARAM": P,
    "isv.INVALID_PARAMETERS": P,
    "isv.PARAM_LENGTH_LIMIT": P,
    "isv.BLACK_KEY_CONTROL_LIMIT": P,  # number on the block list
    "isv.SMS_CONTENT_ILLEGAL": P,
    "isv.EXTEND_CODE_ERROR": P,
    "isv.DOMESTIC_NUMBER_NOT_SUPPORTED": P,
    "isv.DENY_IP_RANGE": P,
    "isv.MONTH_LIMIT_CONTROL": P,  # lasts weeks: backoff cannot outwait it
    "isv.OUT_OF_SERVICE": P,
    "isv.AMOUNT_NOT_ENOUGH": P,
    "isv.PRODUCT_UN_SUBSCRIPT": P,
    "isv.PRODUCT_UNSUBSCRIBE": P,
    "isv.ACCOUNT_NOT_EXISTS": P,
    "isv.ACCOUNT_ABNORMAL": P,
    "isp.RAM_PERMISSION_DENY": P,
    "SignatureDoesNotMatch": P,
    "IncompleteSignature": P,
    "InvalidAccessKeyId.NotFound": P,
    "InvalidAccessKeyId.Inactive": P,
    "InvalidTimeStamp.Format": P,
    "MissingParameter": P,
    "InvalidParameter": P,
}


def _unlisted(code: str) -> SendStatus:
    # "isp." is the platform's side, "isv." the caller's; keep that split for codes added later.
    return R if code.startswith(("isp.", "Throttling")) else P


def percent_encode(value: str) -> str:
    return quote(value, safe="~")


def sign(params: Mapping[str, str], access_key_secret: str, method: str = "POST") -> str:
    canonical = "&".join(
        f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(params.items()) if k != "Signature"
    )
    string_to_sign = f"{method}&{percent_encode('/')}&{percent_encode(canonical)}"
    digest = hmac.new(f"{access_key_secret}&".encode(), string_to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class AliyunSmsChannel(SmsChannelBase):
    name = "aliyun_sms"

    def __init__(
        self,
        *,
        endpoint: str,
        access_key_id: str,
        access_key_secret: str,
        sign_name: str,
        region_id: str = "cn-hangzhou",
        http_client: httpx.AsyncClient | None = None,
        timeouts: HttpTimeouts | None = None,
        clock: Clock = system_clock,
        nonce: NonceSource = uuid_nonce,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(endpoint, http_client=http_client, timeouts=timeouts, logger=logger)
        self._key_id = access_key_id
        self._secret = access_key_secret
        self._sign_name = sign_name
        self._region = region_id
        self._clock = clock
        self._nonce = nonce

    def signed_params(self, message: SmsMessage) -> dict[str, str]:
        params = {
            "AccessKeyId": self._key_id,
            "Action": "SendSms",
            "Format": "JSON",
            "RegionId": self._region,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureNonce": self._nonce(),
            "SignatureVersion": "1.0",
            "Timestamp": datetime.fromtimestamp(self._clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Version": API_VERSION,
            "PhoneNumbers": normalize_cn_mobile(message.phone),
            "SignName": self._sign_name,
            "TemplateCode": message.template_code,
        }
        if message.params:
            # The API accepts only string values; numbers would be rejected as isv.INVALID_JSON_PARAM.
            params["TemplateParam"] = json.dumps(
                {k: str(v) for k, v in message.params.items()}, ensure_ascii=False, separators=(",", ":")
            )
        if message.correlation_id:
            params["OutId"] = message.correlation_id
        params["Signature"] = sign(params, self._secret)
        return params

    def _request_kwargs(self, message: SmsMessage) -> dict[str, Any]:
        # Form body rather than query string: the signed parameters stay out of access logs.
        return {"data": self.signed_params(message)}

    @staticmethod
    def _classify(response: httpx.Response) -> SendOutcome:
        body = json_or_none(response)
        code = body.get("Code") if isinstance(body, dict) else None
        if not code:
            return http_status_outcome(response)
        status = classify(ALIYUN_CODES, code, _unlisted)
        return SendOutcome(status, code, body.get("BizId") or None, str(body.get("Message", "")))
