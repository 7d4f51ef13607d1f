"""WeChat subscribe messages: ``message/subscribe/send`` (mini program) and
``message/subscribe/bizsend`` (official account), authorised by a stable access token.

The token comes from ``POST /cgi-bin/stable_token``. In normal mode WeChat hands every
caller the same token until it nears expiry, so each replica may cache its own copy and
the deployment still holds one token; ``force_refresh`` would invalidate it for every
replica and is limited to 20 a day, so it is used only when normal mode returns the
very token WeChat just rejected.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date as _date

import httpx

from .base import (
    Clock,
    HttpChannelBase,
    HttpTimeouts,
    SendOutcome,
    SendStatus,
    WeChatMessage,
    WeChatTarget,
    classify,
    http_status_outcome,
    json_or_none,
    request_or_outcome,
    system_clock,
)

R, P = SendStatus.RETRYABLE, SendStatus.PERMANENT

TOKEN_REJECTED = frozenset({40001, 40014, 42001})

WECHAT_CODES: Mapping[str, SendStatus] = {
    "0": SendStatus.SENT,
    "43101": SendStatus.USER_REFUSED,  # user refused or cancelled the subscription
    "-1": R,  # system busy
    "45009": R,  # API call quota reached
    "45011": R,  # API minute-level frequency limit
    # token rejected even after a refresh: the token service itself is unsettled
    "40001": R,
    "40014": R,
    "42001": R,
    "40003": P,  # openid empty or invalid
    "40037": P,  # template id invalid
    "41030": P,  # page path not in the released mini program
    "47003": P,  # data argument invalid (value limits)
    "40013": P,  # appid invalid
    "40125": P,  # appsecret invalid
    "40164": P,  # caller IP not on the allow-list
    "48001": P,  # API not authorised for this account
    "VALIDATION": P,  # rejected here, before calling the vendor
}

# Token endpoint: 40001 there means a wrong AppSecret, not a stale token.
TOKEN_ENDPOINT_CODES: Mapping[str, SendStatus] = {"40001": P, "-1": R, "45009": R, "45011": R}


def _unlisted(_code: str) -> SendStatus:
    return P


# ---------------------------------------------------------------- value limits

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff"
_IS_CJK = re.compile(f"[{_CJK}]")
_DATE = r"(?P<y>\d{4})(?:年(?P<m>\d{1,2})月(?P<d>\d{1,2})日|[-/](?P<m2>\d{1,2})[-/](?P<d2>\d{1,2}))"
_TIME = r"(?:[01]?\d|2[0-3]):[0-5]\d(?::[0-5]\d)?"
_MOMENT = re.compile(rf"^(?:{_DATE})?\s*(?P<t>{_TIME})?$")
_AMOUNT = re.compile(r"^[¥￥$€£]?(?P<int>\d+)(?:\.(?P<frac>\d+))?元?$")
_PHONE = re.compile(r"^[0-9+\-()]{1,17}$")
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
_LETTER = re.compile(r"^[A-Za-z]{1,32}$")


def _control_free(value: str) -> bool:
    return value.isprintable()


def _symbols_only(value: str) -> bool:
    return all(not ch.isalnum() and not ch.isspace() and not _IS_CJK.match(ch) for ch in value)


def _moment(value: str, *, need_date: bool) -> bool:
    parts = [p.strip() for p in value.split("~")]
    for index, part in enumerate(parts):
        match = _MOMENT.match(part)
        if not part or not match:
            return False
        has_date, has_time = match.group("y") is not None, match.group("t") is not None
        if not (has_date or has_time):
            return False
        # Only the first end of a range must carry the mandatory part ("…15:01~17:00").
        if index == 0 and (has_date if need_date else has_time) is False:
            return False
        if has_date:
            try:
                _date(int(match.group("y")), int(match.group("m") or match.group("m2")),
                      int(match.group("d") or match.group("d2")))
            except ValueError:
                return False
    return True


def _amount(value: str) -> bool:
    match = _AMOUNT.match(value)
    return bool(match) and len(match.group("int")) + len(match.group("frac") or "") <= 10


def _name(value: str) -> bool:
    if _IS_CJK.search(value):
        return len(value) <= 10  # mixed names count as Chinese names
    return len(value) <= 20 and not any(ch.isdigit() for ch in value) and _control_free(value)


def _car_number(value: str) -> bool:
    if not 2 <= len(value) <= 8:
        return False
    ends_ok = all(ch.isascii() and ch.isalnum() or _IS_CJK.match(ch) for ch in (value[0], value[-1]))
    return ends_ok and all(ch.isascii() and ch.isalnum() for ch in value[1:-1])


# type -> (check, what the limit is); the texts follow WeChat's parameter table.
VALUE_RULES: Mapping[str, tuple[Callable[[str], bool], str]] = {
    "thing": (lambda v: len(v) <= 20 and _control_free(v), "20 characters at most"),
    "number": (lambda v: len(v) <= 32 and bool(_NUMBER.match(v)), "digits only, 32 at most, decimals allowed"),
    "letter": (lambda v: bool(_LETTER.match(v)), "letters only, 32 at most"),
    "symbol": (lambda v: len(v) <= 5 and _symbols_only(v), "symbols only, 5 at most"),
    "character_string": (
        lambda v: len(v) <= 32 and v.isascii() and _control_free(v) and " " not in v,
        "digits, letters or symbols, 32 at most",
    ),
    "time": (lambda v: _moment(v, need_date=False), "24-hour time, date optional, ranges joined by ~"),
    "date": (lambda v: _moment(v, need_date=True), "a date, time optional, ranges joined by ~"),
    "amount": (_amount, "one currency sign and 10 digits at most, decimals and a trailing 元 allowed"),
    "phone_number": (lambda v: bool(_PHONE.match(v)) and any(c.isdigit() for c in v), "digits and symbols, 17 at most"),
    "car_number": (_car_number, "8 at most; first and last may be Chinese, the rest letters or digits"),
    "name": (_name, "10 Chinese characters or 20 letters/symbols at most"),
    "phrase": (lambda v: len(v) <= 5 and all(_IS_CJK.match(ch) for ch in v), "5 Chinese characters at most"),
    "enum": (lambda v: True, "one of the template's enum values"),
}

_KEY = re.compile(r"^(?P<type>[a-z_]+?)(?P<index>\d+)$")


def validate_subscribe_data(data: Mapping[str, str]) -> list[str]:
    """Return one problem per bad key; an empty list means WeChat should accept it."""
    if not data:
        return ["data: at least one key is needed"]
    problems = []
    for key, value in data.items():
        match = _KEY.match(key)
        rule = VALUE_RULES.get(match.group("type")) if match else None
        if rule is None:
            problems.append(f"{key}: unknown field type")
        elif not isinstance(value, str) or not value.strip():
            problems.append(f"{key}: empty")
        elif not rule[0](value):
            problems.append(f"{key}: {rule[1]}")
    return problems


# ---------------------------------------------------------------- access token


class TokenUnavailable(Exception):
    def __init__(self, outcome: SendOutcome) -> None:
        super().__init__(outcome.detail)
        self.outcome = outcome


@dataclass(slots=True)
class _Token:
    value: str
    refresh_at: float


class StableTokenCache:
    """One token per app id, fetched once however many sends wait for it."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        appid: str,
        appsecret: str,
        clock: Clock = system_clock,
        refresh_margin: float = 300.0,
    ) -> None:
        self._http = http
        self._appid = appid
        self._secret = appsecret
        self._clock = clock
        # WeChat issues the next stable token 5 minutes before the current one expires;
        # asking earlier would only return the current token again.
        self._margin = refresh_margin
        self._token: _Token | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def get(self) -> str:
        token = self._token
        if token and self._clock() < token.refresh_at:
            return token.value
        async with self._lock:
            token = self._token
            if token and self._clock() < token.refresh_at:
                return token.value
            return await self._fetch(force=False)

    async def replace(self, rejected: str) -> str:
        """Called when WeChat rejected ``rejected``; concurrent callers share one refresh."""
        async with self._lock:
            if self._token and self._token.value != rejected:
                return self._token.value
            fresh = await self._fetch(force=False)
            if fresh == rejected:
                fresh = await self._fetch(force=True)
            return fresh

    async def _fetch(self, *, force: bool) -> str:
        self.fetches += 1
        body = {"grant_type": "client_credential", "appid": self._appid, "secret": self._secret}
        if force:
            body["force_refresh"] = True
        response = await request_or_outcome(self._http, "POST", "/cgi-bin/stable_token", json=body)
        if isinstance(response, SendOutcome):
            raise TokenUnavailable(response)
        payload = json_or_none(response)
        if not isinstance(payload, dict) or not payload.get("access_token"):
            if isinstance(payload, dict) and "errcode" in payload:
                code = str(payload["errcode"])
                status = TOKEN_ENDPOINT_CODES.get(code) or classify(WECHAT_CODES, code, _unlisted)
                raise TokenUnavailable(SendOutcome(status, code, detail=f"stable_token: {payload.get('errmsg', '')}"))
            raise TokenUnavailable(http_status_outcome(response))
        expires_in = float(payload.get("expires_in", 7200))
        margin = min(self._margin, expires_in / 2)
        self._token = _Token(str(payload["access_token"]), self._clock() + expires_in - margin)
        return self._token.value


# ---------------------------------------------------------------- channel


class WeChatSubscribeChannel(HttpChannelBase):
    name = "wechat"

    def __init__(
        self,
        *,
        api_base: str,
        appid: str,
        appsecret: str,
        target: WeChatTarget = WeChatTarget.MINI_PROGRAM,
        miniprogram_state: str | None = None,
        lang: str = "zh_CN",
        http_client: httpx.AsyncClient | None = None,
        timeouts: HttpTimeouts | None = None,
        clock: Clock = system_clock,
        token_cache: StableTokenCache | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(api_base, http_client=http_client, timeouts=timeouts, logger=logger)
        self._target = target
        self._state = miniprogram_state
        self._lang = lang
        self.tokens = token_cache or StableTokenCache(self._http, appid=appid, appsecret=appsecret, clock=clock)

    def _path(self) -> str:
        leaf = "send" if self._target is WeChatTarget.MINI_PROGRAM else "bizsend"
        return f"/cgi-bin/message/subscribe/{leaf}"

    def _body(self, message: WeChatMessage) -> dict:
        body: dict = {
            "touser": message.openid,
            "template_id": message.template_id,
            "data": {key: {"value": value} for key, value in message.data.items()},
            "lang": self._lang,
        }
        if message.page:
            body["page"] = message.page
        if self._state:
            body["miniprogram_state"] = self._state
        if self._target is WeChatTarget.OFFICIAL_ACCOUNT and message.miniprogram_appid:
            body["miniprogram"] = {"appid": message.miniprogram_appid, "pagepath": message.page or ""}
        return body

    async def send(self, message: WeChatMessage) -> SendOutcome:
        problems = validate_subscribe_data(message.data)
        if problems:
            outcome = SendOutcome(P, "VALIDATION", detail="; ".join(problems))
        else:
            outcome = await self._send_with_token(message)
        self._log.info(
            "wechat %s template=%s ref=%s status=%s code=%s detail=%s",
            self._target.value, message.template_id, message.correlation_id,
            outcome.status, outcome.vendor_code, outcome.detail,
        )
        return outcome

    async def _send_with_token(self, message: WeChatMessage) -> SendOutcome:
        body = self._body(message)
        try:
            token = await self.tokens.get()
            outcome, rejected = await self._post(body, token)
            if rejected:
                # One refresh and one retry: a second rejection is left to the service's backoff.
                token = await self.tokens.replace(token)
                outcome, _ = await self._post(body, token)
        except TokenUnavailable as exc:
            return exc.outcome
        return outcome

    async def _post(self, body: dict, token: str) -> tuple[SendOutcome, bool]:
        response = await self._request("POST", self._path(), params={"access_token": token}, json=body)
        if isinstance(response, SendOutcome):
            return response, False
        payload = json_or_none(response)
        if not isinstance(payload, dict) or "errcode" not in payload:
            # Never guess "sent": a patient left uninformed is worse than a duplicate notice.
            return http_status_outcome(response), False
        errcode = int(payload["errcode"])
        code = str(errcode)
        msgid = payload.get("msgid")
        outcome = SendOutcome(
            classify(WECHAT_CODES, code, _unlisted), code, str(msgid) if msgid else None, str(payload.get("errmsg", ""))
        )
        return outcome, errcode in TOKEN_REJECTED
