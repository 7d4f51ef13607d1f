"""What every notification channel shares: the outcome type, the channel protocol,
the HTTP client setup, the transport-failure mapping and phone masking.

The service layer decides retries and fallbacks; a channel only says which class
a vendor answer belongs to (see ``SendStatus``) and never retries on its own,
except for the WeChat token refresh, which is part of that vendor's protocol.
"""

from __future__ import annotations

import enum
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar, runtime_checkable

import httpx

from services.common.pii import mask_mobile

Clock = Callable[[], float]
"""Seconds since the epoch; injected so tests can sign with a fixed or stale time."""

NonceSource = Callable[[], str]


def system_clock() -> float:
    return time.time()


def uuid_nonce() -> str:
    return uuid.uuid4().hex


class SendStatus(enum.StrEnum):
    SENT = "SENT"
    RETRYABLE = "RETRYABLE"
    PERMANENT = "PERMANENT"
    USER_REFUSED = "USER_REFUSED"


@dataclass(frozen=True, slots=True)
class SendOutcome:
    status: SendStatus
    vendor_code: str
    vendor_message_id: str | None = None
    detail: str = ""
    # The request may have reached the vendor and only the answer failed (a read timeout, a
    # dropped connection): whether the vendor took the message is unknown.
    maybe_sent: bool = False

    @property
    def sent(self) -> bool:
        return self.status is SendStatus.SENT

    @property
    def retryable(self) -> bool:
        return self.status is SendStatus.RETRYABLE


@dataclass(frozen=True, slots=True)
class SmsMessage:
    """One SMS to one mainland number.

    ``params`` keeps the template's variable order: Aliyun takes them by name,
    Tencent by position, so one ordered mapping serves both.
    ``correlation_id`` travels as Aliyun ``OutId`` / Tencent ``SessionContext``.
    """

    phone: str
    template_code: str
    params: Mapping[str, str] = field(default_factory=dict)
    correlation_id: str | None = None


class WeChatTarget(enum.StrEnum):
    MINI_PROGRAM = "mini_program"  # message/subscribe/send
    OFFICIAL_ACCOUNT = "official_account"  # message/subscribe/bizsend


@dataclass(frozen=True, slots=True)
class WeChatMessage:
    """A subscribe message; ``data`` maps template keys such as ``thing1`` to values."""

    openid: str
    template_id: str
    data: Mapping[str, str]
    page: str | None = None
    correlation_id: str | None = None
    # Official-account notices may open a mini program instead of a web page.
    miniprogram_appid: str | None = None


@dataclass(frozen=True, slots=True)
class SendReport:
    """What a vendor reports of a message it took, found by the message's correlation id."""

    vendor_message_id: str
    delivered: bool
    code: str  # the carrier's status, as a receipt carries it (DELIVRD, UNDELIV, ...)


class StatusQueryFailed(Exception):
    """The vendor did not say whether it took a message; ``outcome`` says why."""

    def __init__(self, outcome: SendOutcome) -> None:
        super().__init__(f"{outcome.vendor_code}: {outcome.detail}")
        self.outcome = outcome


@runtime_checkable
class StatusQuery(Protocol):
    """A channel that can ask its vendor about a message whose send answer was lost."""

    async def find_report(self, phone: str, correlation_id: str, sent_after: datetime) -> SendReport | None:
        """The vendor's report of the message sent with ``correlation_id`` to ``phone`` at or
        after ``sent_after``; None when the vendor reports none. Raises StatusQueryFailed."""
        ...


M_contra = TypeVar("M_contra", contravariant=True)


@runtime_checkable
class Channel(Protocol[M_contra]):
    name: str

    async def send(self, message: M_contra) -> SendOutcome: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class HttpTimeouts:
    # Vendors recommend ≥1 s for SendSms; a long read timeout only delays the
    # retry decision, and a timed-out send is retried by the service anyway.
    connect: float = 3.0
    read: float = 10.0
    write: float = 10.0
    pool: float = 5.0


def build_http_client(
    base_url: str,
    timeouts: HttpTimeouts | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    t = timeouts or HttpTimeouts()
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        timeout=httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.pool),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        transport=transport,
        # Vendor endpoints never redirect legitimately; following one could leak a signed request.
        follow_redirects=False,
    )


class _RedactUrlSecrets(logging.Filter):
    """httpx logs request URLs at INFO; WeChat carries its access token in the query."""

    _secret = re.compile(r"(access_token=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        redacted = self._secret.sub(r"\1***", text)
        if redacted != text:
            record.msg, record.args = redacted, None
        return True


def _redact_httpx_logs() -> None:
    httpx_logger = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactUrlSecrets) for f in httpx_logger.filters):
        httpx_logger.addFilter(_RedactUrlSecrets())


class HttpChannelBase:
    """Owns or borrows the HTTP client; subclasses implement ``send``."""

    name = "channel"

    def __init__(
        self,
        base_url: str,
        *,
        http_client: httpx.AsyncClient | None,
        timeouts: HttpTimeouts | None,
        logger: logging.Logger | None,
    ) -> None:
        _redact_httpx_logs()
        self._owns_client = http_client is None
        self._http = http_client or build_http_client(base_url, timeouts)
        self._log = logger or logging.getLogger(f"notify.channels.{self.name}")

    async def aclose(self) -> None:
        if self._owns_client:
            await self._http.aclose()

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response | SendOutcome:
        return await request_or_outcome(self._http, method, url, **kwargs)


# Transport failures before the request could leave: the vendor cannot have taken it.
# Any other (a read or write timeout, a connection the vendor dropped) may follow a request
# the vendor read and acted on.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError,
             httpx.UnsupportedProtocol, httpx.LocalProtocolError)


async def request_or_outcome(
    http: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> httpx.Response | SendOutcome:
    """Send one request; transport failures come back as a RETRYABLE outcome, never raise."""
    try:
        return await http.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        code = "TIMEOUT" if isinstance(exc, httpx.TimeoutException) else "NETWORK"
        return SendOutcome(SendStatus.RETRYABLE, code, detail=type(exc).__name__,
                           maybe_sent=not isinstance(exc, _NOT_SENT))


class SmsChannelBase(HttpChannelBase):
    """One POST to the vendor root per message; vendors differ in signing and answers."""

    def _request_kwargs(self, message: SmsMessage) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def _classify(response: httpx.Response) -> SendOutcome:
        raise NotImplementedError

    async def send(self, message: SmsMessage) -> SendOutcome:
        response = await self._request("POST", "/", **self._request_kwargs(message))
        outcome = response if isinstance(response, SendOutcome) else self._classify(response)
        self._log.info(
            "%s SendSms phone=%s template=%s ref=%s status=%s code=%s vendor_id=%s",
            self.name, mask_phone(message.phone), message.template_code, message.correlation_id,
            outcome.status, outcome.vendor_code, outcome.vendor_message_id,
        )
        return outcome


def json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def http_status_outcome(response: httpx.Response) -> SendOutcome:
    """Classify an answer whose body carries no vendor code."""
    code = f"HTTP_{response.status_code}"
    if response.status_code == 429 or response.status_code >= 500:
        return SendOutcome(SendStatus.RETRYABLE, code, detail="vendor answered without a result code")
    return SendOutcome(SendStatus.PERMANENT, code, detail="vendor answered without a result code")


_CN_MOBILE = re.compile(r"^1[3-9]\d{9}$")


def normalize_cn_mobile(phone: str) -> str:
    """Strip the +86 / 0086 / 86 prefix vendors accept and return the 11 digits."""
    digits = phone.strip().replace(" ", "").replace("-", "")
    for prefix in ("+86", "0086", "86"):
        if digits.startswith(prefix) and len(digits) == len(prefix) + 11:
            return digits[len(prefix):]
    return digits


def is_cn_mobile(phone: str) -> bool:
    return bool(_CN_MOBILE.match(normalize_cn_mobile(phone)))


def mask_phone(phone: str | None) -> str:
    """138****1234 — the only form of a number allowed in logs; vendor prefixes stripped first."""
    return mask_mobile(normalize_cn_mobile(phone)) if phone else "-"


def classify(table: Mapping[str, SendStatus], code: str, fallback: Callable[[str], SendStatus]) -> SendStatus:
    return table.get(code) or fallback(code)
