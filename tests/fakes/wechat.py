"""Fake WeChat server: ``/cgi-bin/stable_token`` and subscribe ``send`` / ``bizsend``.

Tokens behave as getStableAccessToken documents: normal mode returns the live token
until it expires, ``force_refresh`` invalidates it and issues a new one. A request
with a replaced token gets 40001, an expired one 42001, an unknown one 40014.
Subscribe data is checked against WeChat's per-type value table (47003), the openid
shape (40003), the template (40037), refusals (43101) and a per-user rate (45009).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from . import FakeVendorServer, RateWindows

_HAN = "\u3400-\u4dbf\u4e00-\u9fff"
_D = r"\d{4}(?:年\d{1,2}月\d{1,2}日|-\d{1,2}-\d{1,2}|/\d{1,2}/\d{1,2})"
_T = r"(?:[01]?\d|2[0-3]):[0-5]\d(?::[0-5]\d)?"
_TIME_RANGE_END = rf"(?:{_D}\s*)?(?:{_T})?"

# One full-match pattern (or predicate) per value type, following WeChat's table.
VALUE_PATTERNS: dict[str, Any] = {
    "thing": lambda v: 0 < len(v) <= 20 and "\n" not in v,
    "number": lambda v: len(v) <= 32 and re.fullmatch(r"-?[0-9]+(?:\.[0-9]+)?", v),
    "letter": re.compile(r"[A-Za-z]{1,32}"),
    "symbol": lambda v: 0 < len(v) <= 5 and not re.search(rf"[0-9A-Za-z{_HAN}\s]", v),
    "character_string": re.compile(r"[\x21-\x7e]{1,32}"),
    "time": re.compile(rf"(?:{_D}\s*)?{_T}(?:\s*~\s*{_TIME_RANGE_END})?"),
    "date": re.compile(rf"{_D}(?:\s*{_T})?(?:\s*~\s*{_TIME_RANGE_END})?"),
    "amount": lambda v: re.fullmatch(r"[¥￥$€£]?[0-9]+(?:\.[0-9]+)?元?", v)
    and len(re.sub(r"[^0-9]", "", v)) <= 10,
    "phone_number": re.compile(r"[0-9+()\-]{1,17}"),
    "car_number": re.compile(rf"[{_HAN}A-Za-z0-9][A-Za-z0-9]{{0,6}}[{_HAN}A-Za-z0-9]"),
    "name": lambda v: (len(v) <= 10) if re.search(f"[{_HAN}]", v) else (0 < len(v) <= 20 and not re.search(r"[0-9]", v)),
    "phrase": re.compile(rf"[{_HAN}]{{1,5}}"),
    "enum": lambda v: bool(v),
}

_OPENID = re.compile(r"^[A-Za-z0-9_-]{28}$")


def value_ok(kind: str, value: Any) -> bool:
    rule = VALUE_PATTERNS.get(kind)
    if rule is None or not isinstance(value, str) or not value:
        return False
    if isinstance(rule, re.Pattern):
        return rule.fullmatch(value) is not None
    return bool(rule(value))


@dataclass
class _Token:
    value: str
    expires_at: float


# Numbers WeChat writes without CDATA in its XML pushes.
_BARE = frozenset({"CreateTime", "MsgID", "ErrorCode", "PopupScene"})


class FakeWeChat(FakeVendorServer):
    def __init__(
        self,
        *,
        appid: str,
        appsecret: str,
        templates: dict[str, list[str]],  # template id -> data keys
        token_ttl: float = 7200,
        rate_windows: list[tuple[float, int, str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.appid = appid
        self.appsecret = appsecret
        self.templates = templates
        self.token_ttl = token_ttl
        self.refused: set[str] = set()  # users who refuse every template of the account
        self.refused_templates: set[tuple[str, str]] = set()  # (openid, template id) subscriptions gone
        self.rate = RateWindows(rate_windows or [(60, 20, "45009")])
        self.token_requests = 0
        self.forced_refreshes = 0
        self._token: _Token | None = None
        self._retired: set[str] = set()
        self._token_failures: list[int] = []

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/cgi-bin/stable_token", self._stable_token),
            web.post("/cgi-bin/message/subscribe/send", self._send),
            web.post("/cgi-bin/message/subscribe/bizsend", self._send),
        ]

    @staticmethod
    def _answer(errcode: int, errmsg: str, **extra: Any) -> web.Response:
        return web.json_response({"errcode": errcode, "errmsg": errmsg, **extra})

    def _fail(self, errcode: int, errmsg: str) -> web.Response:
        self.reject(str(errcode), errmsg)
        return self._answer(errcode, f"{errmsg} rid: {secrets.token_hex(6)}")

    # -- token -----------------------------------------------------------------

    def _issue(self) -> _Token:
        if self._token:
            self._retired.add(self._token.value)
        self._token = _Token(secrets.token_urlsafe(96), self.clock() + self.token_ttl)
        return self._token

    def fail_next_token(self, errcode: int, times: int = 1) -> None:
        self._token_failures.extend([errcode] * times)

    def expire_token(self) -> None:
        """The live token runs out: using it gives 42001, normal mode issues a new one."""
        if self._token:
            self._token.expires_at = self.clock() - 1

    def rotate_token(self) -> None:
        """Someone else force-refreshed: the token a client holds is no longer the latest (40001)."""
        self._issue()

    @property
    def live_token(self) -> str | None:
        return self._token.value if self._token else None

    async def _stable_token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        try:
            body = await request.json()
        except ValueError:
            return self._fail(47001, "data format error")
        if body.get("grant_type") != "client_credential":
            return self._fail(40002, "invalid grant_type")
        if body.get("appid") != self.appid:
            return self._fail(40013, "invalid appid")
        if body.get("secret") != self.appsecret:
            return self._fail(40125, "invalid appsecret")
        if self._token_failures:
            return self._fail(self._token_failures.pop(0), "scripted token failure")
        token = self._token
        if body.get("force_refresh") is True:
            self.forced_refreshes += 1
            token = self._issue()
        elif token is None or token.expires_at <= self.clock():
            token = self._issue()
        return web.json_response({"access_token": token.value, "expires_in": int(token.expires_at - self.clock())})

    # -- subscribe send / bizsend ---------------------------------------------------

    async def _send(self, request: web.Request) -> web.Response:
        presented = request.query.get("access_token")
        if not presented:
            return self._fail(41001, "access_token missing")
        live = self._token
        if live and presented == live.value:
            if live.expires_at <= self.clock():
                return self._fail(42001, "access_token expired")
        elif presented in self._retired:
            return self._fail(40001, "invalid credential, access_token is invalid or not latest")
        else:
            return self._fail(40014, "invalid access_token")
        scripted = self.take_scripted()
        if scripted:
            return await self.transport_failure(scripted) or self._fail(int(scripted.code), scripted.message)
        try:
            body = await request.json()
        except ValueError:
            return self._fail(47001, "data format error")
        return self._check_message(body, bizsend=request.path.endswith("bizsend"))

    def _check_message(self, body: dict, *, bizsend: bool) -> web.Response:
        openid = body.get("touser", "")
        if not isinstance(openid, str) or not _OPENID.match(openid):
            return self._fail(40003, "invalid openid")
        keys = self.templates.get(body.get("template_id", ""))
        if keys is None:
            return self._fail(40037, "invalid template_id")
        data = body.get("data")
        if not isinstance(data, dict):
            return self._fail(47003, "argument invalid! data is empty")
        for key in keys:
            item = data.get(key)
            value = item.get("value") if isinstance(item, dict) else None
            if value in (None, ""):
                return self._fail(47003, f"argument invalid! data.{key}.value is empty")
            if not value_ok(re.sub(r"\d+$", "", key), value):
                return self._fail(47003, f"argument invalid! data.{key}.value invalid")
        if openid in self.refused or (openid, body["template_id"]) in self.refused_templates:
            return self._fail(43101, "user refuse to accept the msg")
        limited = self.rate.check(openid, self.clock())
        if limited:
            return self._fail(int(limited), "api freq out of limit")
        msgid = 10**18 + secrets.randbelow(9 * 10**18)  # WeChat's ids are 19-digit and unique
        self.accepted.append({
            "openid": openid, "template_id": body["template_id"], "data": {k: v["value"] for k, v in data.items()},
            "page": body.get("page"), "miniprogram": body.get("miniprogram"),
            "miniprogram_state": body.get("miniprogram_state"), "lang": body.get("lang"),
            "endpoint": "bizsend" if bizsend else "send", "msgid": msgid,
        })
        return self._answer(0, "ok", msgid=msgid)

    # -- pushes to the account's server URL: send results and the users' choices -----------

    def sent_event(self, record: dict, *, error_code: int = 0, fmt: str = "xml") -> bytes:
        """The push WeChat makes once it knows whether an accepted message reached the user."""
        status = {0: "success", 43101: "failed:user refuse to accept the msg"}.get(error_code, "failed:system failed")
        entry = {"TemplateId": record["template_id"], "MsgID": str(record["msgid"]),
                 "ErrorCode": str(error_code), "ErrorStatus": status}
        return self._push(record["openid"], "subscribe_msg_sent_event", "SubscribeMsgSentEvent", [entry], fmt=fmt)

    def user_chooses(self, openid: str, choices: dict[str, str], *, popup: bool = False, fmt: str = "xml",
                     created: int | None = None) -> bytes:
        """A user answers the subscribe pop-up (`popup`) or turns templates off in the
        settings: {template id: "accept" | "reject"}. WeChat's state changes at once (a
        rejected template is refused with 43101); returns the push that reports it."""
        for template_id, status in choices.items():
            if status == "reject":
                self.refused_templates.add((openid, template_id))
            else:
                self.refused_templates.discard((openid, template_id))
        entries = [{"TemplateId": t, "SubscribeStatusString": s, **({"PopupScene": "0"} if popup else {})}
                   for t, s in choices.items()]
        if popup:
            return self._push(openid, "subscribe_msg_popup_event", "SubscribeMsgPopupEvent", entries, fmt=fmt,
                              created=created)
        return self._push(openid, "subscribe_msg_change_event", "SubscribeMsgChangeEvent", entries, fmt=fmt,
                          created=created)

    def _push(self, openid: str, event: str, parent: str, entries: list[dict], *, fmt: str,
              created: int | None = None) -> bytes:
        fields = {"ToUserName": f"gh_{self.appid[-12:]}", "FromUserName": openid,
                  "CreateTime": str(int(self.clock()) if created is None else created), "MsgType": "event",
                  "Event": event}
        if fmt == "json":
            # As WeChat does: a lone entry is an object, several an array.
            return json.dumps({**fields, "List": entries[0] if len(entries) == 1 else entries},
                              ensure_ascii=False).encode()

        def xml(values: dict) -> str:
            return "".join(f"<{k}>{v}</{k}>" if k in _BARE else f"<{k}><![CDATA[{v}]]></{k}>"
                           for k, v in values.items())
        items = "".join(f"<List>{xml(e)}</List>" for e in entries)
        return f"<xml>{xml(fields)}<{parent}>{items}</{parent}></xml>".encode()

    async def push_event(self, url: str, token: str, body: bytes, *, timestamp: int | None = None,
                         nonce: str | None = None, signature: str | None = None) -> tuple[int, str]:
        """POST a push as WeChat does: signature = sha1 of the sorted token, timestamp and nonce."""
        ts = str(int(self.clock()) if timestamp is None else timestamp)
        nonce = nonce or str(secrets.randbelow(10**9))
        sig = signature or hashlib.sha1("".join(sorted((token, ts, nonce))).encode()).hexdigest()
        params = {"signature": sig, "timestamp": ts, "nonce": nonce, "openid": "from-push"}
        async with aiohttp.ClientSession() as session:
            async with session.post(url, params=params, data=body,
                                    headers={"Content-Type": "text/xml" if body[:1] == b"<" else "application/json"}
                                    ) as response:
                return response.status, await response.text()
