"""Fake Alibaba Cloud SMS endpoint (Dysmsapi ``SendSms``, version 2017-05-25).

Checks, in the order the gateway applies them: common parameters, AccessKeyId,
Timestamp (ISO 8601 UTC, within 15 minutes), the HMAC-SHA1 signature recomputed
from the received parameters, SignatureNonce reuse; then the SendSms fields:
phone shape, sign name, template, TemplateParam (a JSON object of strings, each at
most ``max_param_chars``), block list and per-number flow control.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import uuid
from calendar import timegm
from time import strptime
from typing import Any

from aiohttp import web

from . import FakeVendorServer, RateWindows, beijing_time

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_MAINLAND = re.compile(r"^(?:\+86|0086|86)?(1[3-9][0-9]{9})$")
TIMESTAMP_TOLERANCE = 15 * 60


def rfc3986(text: str) -> str:
    return "".join(chr(b) if chr(b) in _UNRESERVED else f"%{b:02X}" for b in text.encode("utf-8"))


def expected_signature(params: dict[str, str], secret: str, method: str) -> str:
    pairs = sorted((k, v) for k, v in params.items() if k != "Signature")
    query = "&".join(rfc3986(k) + "=" + rfc3986(v) for k, v in pairs)
    to_sign = method + "&" + rfc3986("/") + "&" + rfc3986(query)
    mac = hmac.new((secret + "&").encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


class FakeAliyunSms(FakeVendorServer):
    def __init__(
        self,
        *,
        access_keys: dict[str, str],
        sign_names: set[str],
        templates: dict[str, list[str]],
        blacklist: set[str] = frozenset(),
        max_param_chars: int = 35,
        rate_windows: list[tuple[float, int, str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.access_keys = access_keys
        self.sign_names = sign_names
        self.templates = templates
        self.blacklist = set(blacklist)
        self.max_param_chars = max_param_chars
        # Documented default for notices: same sign, template and number, 50 a day.
        self.rate = RateWindows(rate_windows or [(86400, 50, "isv.BUSINESS_LIMIT_CONTROL")])
        self._nonces: set[str] = set()

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/", self._send_sms)]

    def _error(self, code: str, message: str, http_status: int = 200) -> web.Response:
        self.reject(code, message)
        return web.json_response(
            {"RequestId": str(uuid.uuid4()).upper(), "Code": code, "Message": message}, status=http_status
        )

    async def _send_sms(self, request: web.Request) -> web.Response:
        params: dict[str, str] = dict(request.query)
        params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        rejection = self._check_gateway(params, request.method)
        if rejection:
            return rejection
        scripted = self.take_scripted()
        if scripted:
            return await self.transport_failure(scripted) or self._error(scripted.code, scripted.message)
        return self._check_send_sms(params)

    def _check_gateway(self, params: dict[str, str], method: str) -> web.Response | None:
        for name in ("AccessKeyId", "Action", "Signature", "SignatureMethod", "SignatureNonce",
                     "SignatureVersion", "Timestamp", "Version"):
            if not params.get(name):
                return self._error(f"Missing{name}", f"{name} is mandatory for this action.", 400)
        if params["SignatureMethod"] != "HMAC-SHA1" or params["SignatureVersion"] != "1.0":
            return self._error("InvalidParameter", "Specified signature method or version is not supported.", 400)
        secret = self.access_keys.get(params["AccessKeyId"])
        if secret is None:
            return self._error("InvalidAccessKeyId.NotFound", "Specified access key is not found.", 404)
        try:
            sent_at = timegm(strptime(params["Timestamp"], "%Y-%m-%dT%H:%M:%SZ"))
        except ValueError:
            return self._error("InvalidTimeStamp.Format", "Specified time stamp or date value is not well formatted.", 400)
        if abs(self.clock() - sent_at) > TIMESTAMP_TOLERANCE:
            return self._error("InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.", 400)
        if not hmac.compare_digest(params["Signature"], expected_signature(params, secret, method)):
            return self._error("SignatureDoesNotMatch", "Specified signature is not matched with our calculation.", 400)
        if params["SignatureNonce"] in self._nonces:
            return self._error("SignatureNonceUsed", "Specified signature nonce was used already.", 400)
        self._nonces.add(params["SignatureNonce"])
        if params["Action"] != "SendSms" or params["Version"] != "2017-05-25":
            return self._error("InvalidApi.NotFound", "Specified api is not found, please check your url and method.", 404)
        return None

    def _check_send_sms(self, params: dict[str, str]) -> web.Response:
        match = _MAINLAND.match(params.get("PhoneNumbers", ""))
        if not match:
            return self._error("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号")
        phone = match.group(1)
        if params.get("SignName") not in self.sign_names:
            return self._error("isv.SMS_SIGNATURE_ILLEGAL", "该账号下找不到对应签名")
        wanted = self.templates.get(params.get("TemplateCode", ""))
        if wanted is None:
            return self._error("isv.SMS_TEMPLATE_ILLEGAL", "该账号下找不到对应模板")
        try:
            values = json.loads(params.get("TemplateParam") or "{}")
        except ValueError:
            return self._error("isv.INVALID_JSON_PARAM", "JSON参数不合法，只接受字符串值")
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            return self._error("isv.INVALID_JSON_PARAM", "JSON参数不合法，只接受字符串值")
        missing = [name for name in wanted if name not in values]
        if missing:
            return self._error("isv.TEMPLATE_MISSING_PARAMETERS", f"模板缺少变量: {','.join(missing)}")
        too_long = [k for k, v in values.items() if len(v) > self.max_param_chars]
        if too_long:
            return self._error("isv.PARAM_LENGTH_LIMIT", f"参数超出长度限制: {','.join(too_long)}")
        if phone in self.blacklist:
            return self._error("isv.BLACK_KEY_CONTROL_LIMIT", "黑名单管控")
        limited = self.rate.check(f"{params['SignName']}|{params['TemplateCode']}|{phone}", self.clock())
        if limited:
            return self._error(limited, "触发号码天级流控Permits:50")
        biz_id = f"{uuid.uuid4().int % 10**18:018d}^0"
        self.accepted.append({
            "phone": phone, "sign_name": params["SignName"], "template_code": params["TemplateCode"],
            "params": values, "out_id": params.get("OutId"), "biz_id": biz_id, "sent_at": self.clock(),
            "raw": params,
        })
        return web.json_response(
            {"Code": "OK", "Message": "OK", "BizId": biz_id, "RequestId": str(uuid.uuid4()).upper()}
        )

    # -- receipts (SmsReport, HTTP batch push) -------------------------------------

    def receipt_for(self, record: dict, *, delivered: bool = True, err_code: str | None = None) -> dict:
        return {
            "phone_number": record["phone"],
            "send_time": beijing_time(record["sent_at"]),
            "report_time": beijing_time(self.clock()),
            "success": delivered,
            "err_code": err_code or ("DELIVERED" if delivered else "MK:0001"),
            "err_msg": "用户接收成功" if delivered else "用户接收失败",
            "sms_size": "1",
            "biz_id": record["biz_id"],
            "out_id": record["out_id"] or "",
        }
