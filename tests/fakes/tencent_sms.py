"""Fake Tencent Cloud SMS endpoint (API 3.0 ``SendSms`` and ``PullSmsSendStatusByPhoneNumber``,
version 2021-01-11).

The gateway part parses the Authorization header, rebuilds the canonical request
from the headers the client declared in SignedHeaders and the raw body, and derives
the TC3 key chain itself (AuthFailure.* on any mismatch, SignatureExpire beyond five
minutes). The SMS part checks the app id, sign, template and parameter count and
length, then gives every number its own SendStatus (phone shape, block list and the
30-second / 1-hour / daily per-number windows).

The status pull checks its parameters as the 2021-01-11 version names them (the 2019-07-11
names SendDateTime and SmsSdkAppid are unknown parameters there), answers at most 20
requests a second, and reports only messages the fake took, each once the carrier's report
is in (``report_delay`` seconds after the send), with the SessionContext it was sent with.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from typing import Any

from aiohttp import web

from . import FakeVendorServer, RateWindows, beijing_time

_AUTH = re.compile(
    r"^TC3-HMAC-SHA256 Credential=(?P<id>[^/\s]+)/(?P<date>\d{4}-\d{2}-\d{2})/(?P<service>[a-z]+)/tc3_request, "
    r"SignedHeaders=(?P<headers>[a-z0-9;-]+), Signature=(?P<sig>[0-9a-f]{64})$"
)
_E164_CN = re.compile(r"^(?:\+86|0086|86)?(1[3-9]\d{9})$")
_E164_STRICT = re.compile(r"^\+86(1[3-9]\d{9})$")
MAX_SKEW = 300
SEND, PULL = "SendSms", "PullSmsSendStatusByPhoneNumber"
PULL_FIELDS = {"BeginTime": (int, True), "Offset": (int, True), "Limit": (int, True), "PhoneNumber": (str, True),
               "SmsSdkAppId": (str, True), "EndTime": (int, False)}  # name -> type, required
PULL_DAYS = 7  # how far back statuses can be pulled
# Codes that Tencent reports per number inside SendStatusSet rather than as a request error.
PER_NUMBER = ("LimitExceeded.PhoneNumber", "InvalidParameterValue.IncorrectPhoneNumber",
              "FailedOperation.PhoneNumberInBlacklist", "FailedOperation.InsufficientBalanceInSmsPackage")


def _mac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def expected_signature(secret_key: str, date: str, service: str, timestamp: str, canonical_request: str) -> str:
    scope = "/".join((date, service, "tc3_request"))
    digest = hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
    string_to_sign = f"TC3-HMAC-SHA256\n{timestamp}\n{scope}\n{digest}"
    signing_key = _mac(_mac(_mac(("TC3" + secret_key).encode("utf-8"), date), service), "tc3_request")
    return hmac.new(signing_key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


class FakeTencentSms(FakeVendorServer):
    def __init__(
        self,
        *,
        secrets: dict[str, str],
        sdk_app_id: str,
        sign_names: set[str],
        templates: dict[str, int],  # template id -> number of parameters
        blacklist: set[str] = frozenset(),
        max_param_chars: int = 12,
        rate_windows: list[tuple[float, int, str]] | None = None,
        service: str = "sms",
        report_delay: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.secrets = secrets
        self.sdk_app_id = sdk_app_id
        self.sign_names = sign_names
        self.templates = templates
        self.blacklist = set(blacklist)
        # Personal accounts: 12 characters a variable (6 for accounts opened after 2024-01-25).
        self.max_param_chars = max_param_chars
        self.service = service
        self.rate = RateWindows(rate_windows or [
            (30, 1, "LimitExceeded.PhoneNumberThirtySecondLimit"),
            (3600, 5, "LimitExceeded.PhoneNumberOneHourLimit"),
            (86400, 10, "LimitExceeded.PhoneNumberDailyLimit"),
        ])
        # Seconds from a send until the carrier's report is in (and the message can be pulled).
        self.report_delay = report_delay
        self.undelivered: set[str] = set()  # numbers whose messages the carrier reports as not received
        # Tencent returns SessionContext in pulled statuses only once its SMS support enabled it.
        self.session_context_in_pulls = True
        self.pull_rate = RateWindows([(1, 20, "RequestLimitExceeded")])
        self.calls: list[dict[str, Any]] = []  # every request that passed the gateway: action, at
        self.pulls: list[dict[str, Any]] = []  # every answered pull: its parameters and what it returned

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/", self._api)]

    def _error(self, code: str, message: str) -> web.Response:
        self.reject(code, message)
        # API 3.0 answers HTTP 200 and puts the failure in Response.Error.
        return web.json_response({"Response": {"Error": {"Code": code, "Message": message},
                                               "RequestId": str(uuid.uuid4())}})

    async def _api(self, request: web.Request) -> web.Response:
        raw = await request.read()
        rejection = self._check_gateway(request, raw)
        if rejection:
            return rejection
        action = request.headers["X-TC-Action"]
        self.calls.append({"action": action, "at": self.clock()})
        scripted = self.take_scripted(action)
        forced_code = None
        if scripted:
            failure = await self.transport_failure(scripted)
            if failure:
                return failure
            if action != SEND or not scripted.code.startswith(PER_NUMBER):
                return self._error(scripted.code, scripted.message)
            forced_code = scripted.code
        try:
            body = json.loads(raw)
        except ValueError:
            return self._error("FailedOperation.JsonParseFail", "解析请求包体时候失败。")
        if not isinstance(body, dict):
            return self._error("FailedOperation.JsonParseFail", "解析请求包体时候失败。")
        if action == PULL:
            return self._pull_send_status(body)
        return self._check_send_sms(body, forced_code)

    def _check_gateway(self, request: web.Request, raw: bytes) -> web.Response | None:
        match = _AUTH.match(request.headers.get("Authorization", ""))
        if not match:
            return self._error("AuthFailure.InvalidAuthorization", "Authorization header is invalid.")
        secret = self.secrets.get(match["id"])
        if secret is None:
            return self._error("AuthFailure.SecretIdNotFound", "The SecretId is not found.")
        stamp = request.headers.get("X-TC-Timestamp", "")
        if not stamp.isdigit():
            return self._error("MissingParameter", "X-TC-Timestamp is missing or invalid.")
        if abs(self.clock() - int(stamp)) > MAX_SKEW:
            return self._error("AuthFailure.SignatureExpire", "Signature expired. Timestamp and server time differ by more than five minutes.")
        signed = match["headers"].split(";")
        if "content-type" not in signed or "host" not in signed:
            return self._error("AuthFailure.InvalidAuthorization", "SignedHeaders must include content-type and host.")
        if time.strftime("%Y-%m-%d", time.gmtime(int(stamp))) != match["date"] or match["service"] != self.service:
            return self._error("AuthFailure.SignatureFailure", "The provided credentials could not be validated.")
        headers = "".join(f"{h}:{request.headers.get(h, '').strip().lower()}\n" for h in signed)
        canonical = "\n".join([request.method, request.path, request.query_string, headers,
                               match["headers"], hashlib.sha256(raw).hexdigest()])
        if not hmac.compare_digest(match["sig"], expected_signature(secret, match["date"], match["service"], stamp, canonical)):
            return self._error("AuthFailure.SignatureFailure", "The provided credentials could not be validated. Please check your signature is correct.")
        if request.headers.get("X-TC-Action") not in (SEND, PULL):
            return self._error("InvalidAction", "The requested action does not exist.")
        if request.headers.get("X-TC-Version") != "2021-01-11":
            return self._error("NoSuchVersion", "The requested version does not exist.")
        if not request.headers.get("X-TC-Region"):
            return self._error("MissingParameter", "The Region parameter is required for this API.")
        return None

    def _check_send_sms(self, body: dict, forced_code: str | None) -> web.Response:
        if body.get("SmsSdkAppId") != self.sdk_app_id:
            return self._error("InvalidParameterValue.SdkAppIdNotExist", "SdkAppId不存在。")
        if body.get("SignName") not in self.sign_names:
            return self._error("FailedOperation.SignatureIncorrectOrUnapproved", "签名未审批或格式错误。")
        params = body.get("TemplateParamSet") or []
        expected = self.templates.get(str(body.get("TemplateId", "")))
        if expected is None or len(params) != expected:
            return self._error("FailedOperation.TemplateIncorrectOrUnapproved", "模板未审批或请求的内容与审核通过的模板内容不匹配。")
        if any(not isinstance(p, str) or len(p) > self.max_param_chars for p in params):
            return self._error("InvalidParameterValue.TemplateParameterLengthLimit", "单个模板变量字符数超过限制。")
        numbers = body.get("PhoneNumberSet") or []
        if not numbers:
            return self._error("MissingParameter.EmptyPhoneNumberSet", "传入的号码列表为空。")
        if len(numbers) > 200:
            return self._error("LimitExceeded.PhoneNumberCountLimit", "单次提交的手机号个数超过200个。")
        statuses = [self._one_number(str(n), body, forced_code) for n in numbers]
        return web.json_response({"Response": {"SendStatusSet": statuses, "RequestId": str(uuid.uuid4())}})

    def _one_number(self, number: str, body: dict, forced_code: str | None) -> dict:
        status = {"SerialNo": "", "PhoneNumber": number, "Fee": 0,
                  "SessionContext": body.get("SessionContext", ""), "IsoCode": "CN"}
        match = _E164_CN.match(number)
        code = forced_code
        if code is None and not match:
            code = "InvalidParameterValue.IncorrectPhoneNumber"
        if code is None and match[1] in self.blacklist:
            code = "FailedOperation.PhoneNumberInBlacklist"
        if code is None:
            code = self.rate.check(match[1], self.clock())
        if code:
            self.reject(code, number[:6])
            return {**status, "Code": code, "Message": code, "IsoCode": "DEF" if not match else "CN"}
        serial = f"{uuid.uuid4().int % 10**6:06d}:{uuid.uuid4().int % 10**28:028d}"
        self.accepted.append({
            "phone": match[1], "template_id": str(body["TemplateId"]), "params": list(body.get("TemplateParamSet") or []),
            "sign_name": body["SignName"], "session_context": body.get("SessionContext"),
            "serial_no": serial, "sent_at": self.clock(),
        })
        return {**status, "SerialNo": serial, "Fee": 1, "Code": "Ok", "Message": "send success"}

    # -- status pull (PullSmsSendStatusByPhoneNumber) ---------------------------------

    def _pull_send_status(self, body: dict) -> web.Response:
        now = self.clock()
        unknown = sorted(set(body) - PULL_FIELDS.keys())
        if unknown:
            return self._error("UnknownParameter", f"The parameter `{unknown[0]}` is not recognized.")
        missing = [name for name, (_, required) in PULL_FIELDS.items() if required and name not in body]
        if missing:
            return self._error("MissingParameter", f"The request is missing a required parameter `{missing[0]}`.")
        wrong = [name for name, (kind, _) in PULL_FIELDS.items()
                 if name in body and (not isinstance(body[name], kind) or isinstance(body[name], bool))]
        if wrong:
            return self._error("InvalidParameter", f"The parameter `{wrong[0]}` has a wrong type.")
        if body["SmsSdkAppId"] != self.sdk_app_id:
            return self._error("InvalidParameterValue.SdkAppIdNotExist", "SdkAppId不存在。")
        match = _E164_STRICT.match(body["PhoneNumber"])
        if not match:
            return self._error("InvalidParameterValue.IncorrectPhoneNumber", "手机号需为 E.164 格式。")
        if body["Offset"] != 0:
            return self._error("InvalidParameterValue", "Offset 目前固定为 0。")
        if not 1 <= body["Limit"] <= 100:
            return self._error("InvalidParameterValue", "Limit 取值范围为 1 到 100。")
        begin, end = body["BeginTime"], body.get("EndTime", now)
        if begin < now - PULL_DAYS * 86400 or end < begin:
            return self._error("InvalidParameterValue", "拉取时间范围错误：最多可拉取7天内的数据。")
        limited = self.pull_rate.check(PULL, now)
        if limited:
            return self._error(limited, "请求频率超过限制。")
        statuses = [self._pulled(r) for r in self.accepted
                    if r["phone"] == match[1] and begin <= r["sent_at"] + self.report_delay <= min(end, now)]
        statuses = statuses[:body["Limit"]]
        self.pulls.append({**body, "at": now, "found": [s["SessionContext"] for s in statuses]})
        return web.json_response({"Response": {"PullSmsSendStatusSet": statuses, "RequestId": str(uuid.uuid4())}})

    def _pulled(self, record: dict) -> dict:
        report_status, code, _ = _verdict(record["phone"] not in self.undelivered)
        return {
            "UserReceiveTime": int(record["sent_at"] + self.report_delay),
            "CountryCode": "86",
            "SubscriberNumber": record["phone"],
            "PhoneNumber": f"+86{record['phone']}",
            "SerialNo": record["serial_no"],
            "ReportStatus": report_status,
            "Description": code,
            "SessionContext": (record["session_context"] or "") if self.session_context_in_pulls else "",
        }

    # -- receipts (SMS status callback) ------------------------------------------------

    def receipt_for(self, record: dict, *, delivered: bool = True, errmsg: str | None = None) -> dict:
        report_status, code, description = _verdict(delivered)
        return {
            "user_receive_time": beijing_time(self.clock()),
            "nationcode": "86",
            "mobile": record["phone"],
            "report_status": report_status,
            "errmsg": errmsg or code,
            "description": description,
            "sid": record["serial_no"],
        }


def _verdict(delivered: bool) -> tuple[str, str, str]:
    """A carrier's report as both the callback and the pull give it: status, code, description."""
    if delivered:
        return "SUCCESS", "DELIVRD", "用户短信送达成功"
    return "FAIL", "UNDELIV", "用户短信未送达"
