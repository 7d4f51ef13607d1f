"""WeChat's pushes to the account's server URL (消息推送), read as delivery receipts.

WeChat accepts a subscribe message synchronously (``msgid``) and reports later whether it
reached the user: ``subscribe_msg_sent_event``, one ``List`` entry per message with
``MsgID``, ``ErrorCode`` (0 when delivered; 43101 when the user refuses the account's
messages) and ``ErrorStatus``. WeChat proves a push is its own by
``signature = sha1(sorted(token, timestamp, nonce))`` in the query string, with the token
set in its console, verifies the URL once by a GET that must echo ``echostr``, waits about
5 s for an answer and pushes up to three times; any 200 answer (``success``) ends it.

The user's choices arrive the same way, per template: ``subscribe_msg_popup_event`` (the
answers in the subscribe pop-up, ``accept`` or ``reject`` for each template) and
``subscribe_msg_change_event`` (a template turned off in the service-notification
settings; WeChat pushes only rejections). A send result with 43101 is a choice too: that
template's subscription is gone. They become TemplateChoice values, the newest per openid
and template deciding whether the template may still be sent by WeChat.

Plaintext and compatible mode are read; a safe-mode-only push (AES body, no plaintext
fields) is refused with 400, so the console must not be set to safe mode alone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree

from aiohttp import web

from .base import SendStatus
from .receipts import OnReceipts, PhoneHasher, Receipt, ReceiptFormatError, RecentKeys, Vendor, store_once
from .wechat import WECHAT_CODES

log = logging.getLogger("notify.channels.wechat_events")

SENT_EVENT = "subscribe_msg_sent_event"
POPUP_EVENT = "subscribe_msg_popup_event"
CHANGE_EVENT = "subscribe_msg_change_event"
# The element holding an event's List entries in the XML form.
_LIST_PARENTS = {SENT_EVENT: "SubscribeMsgSentEvent", POPUP_EVENT: "SubscribeMsgPopupEvent",
                 CHANGE_EVENT: "SubscribeMsgChangeEvent"}
# Pushes older than this are refused: a captured push cannot be replayed later.
MAX_AGE_SECONDS = 600


def signature(token: str, timestamp: str, nonce: str) -> str:
    return hashlib.sha1("".join(sorted((token, timestamp, nonce))).encode()).hexdigest()


def signature_ok(token: str, query: dict[str, str], now: float | None = None) -> bool:
    timestamp, nonce, presented = query.get("timestamp", ""), query.get("nonce", ""), query.get("signature", "")
    if not (token and timestamp and nonce and presented):
        return False
    try:
        age = (time.time() if now is None else now) - int(timestamp)
    except ValueError:
        return False
    if abs(age) > MAX_AGE_SECONDS:
        return False
    return hmac.compare_digest(signature(token, timestamp, nonce), presented)


def _xml_fields(body: bytes) -> dict[str, Any]:
    # Parsed only after the signature check, so the XML comes from WeChat; the standard
    # library's expat neither fetches external entities nor expands entity bombs.
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise ReceiptFormatError(f"not XML: {exc}") from exc
    fields: dict[str, Any] = {child.tag: (child.text or "").strip() for child in root if len(child) == 0}
    event = root.find(_LIST_PARENTS.get(str(fields.get("Event")), "SubscribeMsgSentEvent"))
    if event is not None:
        fields["List"] = [{item.tag: (item.text or "").strip() for item in entry} for entry in event.findall("List")]
    return fields


def _json_fields(body: bytes) -> dict[str, Any]:
    try:
        fields = json.loads(body)
    except ValueError as exc:
        raise ReceiptFormatError(f"not JSON: {exc}") from exc
    if not isinstance(fields, dict):
        raise ReceiptFormatError("expected a JSON object")
    entries = fields.get("List")
    parent = fields.get(_LIST_PARENTS.get(str(fields.get("Event")), "SubscribeMsgSentEvent"))
    if entries is None and isinstance(parent, dict):
        entries = parent.get("List")
    # WeChat sends a lone entry as an object, several as an array.
    fields["List"] = [entries] if isinstance(entries, dict) else entries or []
    return fields


@dataclass(frozen=True, slots=True)
class TemplateChoice:
    """A WeChat user's decision on one template: accepted, or refused (rejected, or 43101)."""
    openid: str
    template_id: str
    accepted: bool
    decided_at: datetime


@dataclass(frozen=True)
class WeChatPush:
    receipts: list[Receipt] = field(default_factory=list)
    choices: list[TemplateChoice] = field(default_factory=list)


OnChoices = Callable[[list[TemplateChoice]], Awaitable[None]]


def parse_wechat_push(body: bytes, *, openid_hasher: PhoneHasher, now: datetime | None = None) -> WeChatPush:
    """The send results and template choices a push carries; other events (menu clicks,
    follows) carry none. A choice is dated by the push's CreateTime, else `now`."""
    fields = _json_fields(body) if body.lstrip()[:1] == b"{" else _xml_fields(body)
    if fields.get("Encrypt") and not fields.get("MsgType"):
        raise ReceiptFormatError("safe-mode push: set the console to plaintext or compatible mode")
    event = fields.get("Event")
    if fields.get("MsgType") != "event" or event not in _LIST_PARENTS:
        return WeChatPush()
    openid = str(fields.get("FromUserName") or "")
    if not openid:
        raise ReceiptFormatError("missing FromUserName")
    try:
        created = fields.get("CreateTime")
        reported_at = datetime.fromtimestamp(int(created), UTC) if created else None
    except (TypeError, ValueError, OverflowError):
        reported_at = None
    decided_at = reported_at or now or datetime.now(UTC)
    entries = [e for e in fields["List"] if isinstance(e, dict)]
    if len(entries) != len(fields["List"]):
        raise ReceiptFormatError("a List entry that is not an object")
    if event != SENT_EVENT:
        return WeChatPush(choices=_choices(openid, entries, decided_at))
    receipts, refusals = [], []
    for entry in entries:
        if not entry.get("MsgID") or entry.get("ErrorCode") in (None, ""):
            raise ReceiptFormatError("a List entry without MsgID or ErrorCode")
        code = str(entry["ErrorCode"])
        receipts.append(Receipt(
            vendor=Vendor.WECHAT, vendor_message_id=str(entry["MsgID"]), out_id=None,
            phone_masked=openid[:6] + "****", phone_hash=openid_hasher(openid),
            delivered=code == "0", code=code, reported_at=reported_at))
        if WECHAT_CODES.get(code) is SendStatus.USER_REFUSED and entry.get("TemplateId"):
            refusals.append(TemplateChoice(openid, str(entry["TemplateId"]), False, decided_at))
    return WeChatPush(receipts=receipts, choices=refusals)


def _choices(openid: str, entries: list[dict], decided_at: datetime) -> list[TemplateChoice]:
    choices = []
    for entry in entries:
        template_id, status = str(entry.get("TemplateId") or ""), str(entry.get("SubscribeStatusString") or "")
        if not template_id or not status:
            raise ReceiptFormatError("a List entry without TemplateId or SubscribeStatusString")
        # "accept", or for long-term subscriptions "acceptWithAudio" / "acceptWithAlert".
        if status.startswith("accept") or status == "reject":
            choices.append(TemplateChoice(openid, template_id, status != "reject", decided_at))
        else:
            log.warning("wechat choice %r for template %s ignored", status, template_id)
    return choices


def wechat_event_routes(on_receipts: OnReceipts, *, on_choices: OnChoices, token: str, openid_hasher: PhoneHasher,
                        recent: RecentKeys | None = None, path: str = "/wechat/events") -> list[web.RouteDef]:
    """``GET path`` (WeChat's URL check) and ``POST path`` (its pushes), both signed with `token`.
    A push's template choices are stored before its receipts, so the refusal a 43101 result
    carries is in place when that receipt moves the message to another channel."""
    memory = recent or RecentKeys()

    async def verify(request: web.Request) -> web.Response:
        if not signature_ok(token, dict(request.query)):
            return web.Response(status=403, text="bad signature")
        return web.Response(text=request.query.get("echostr", ""))

    async def push(request: web.Request) -> web.Response:
        if not signature_ok(token, dict(request.query)):
            log.warning("wechat push refused: bad or stale signature")
            return web.Response(status=403, text="bad signature")
        try:
            parsed = parse_wechat_push(await request.read(), openid_hasher=openid_hasher)
        except ReceiptFormatError as exc:
            log.warning("wechat push rejected: %s", exc)
            return web.Response(status=400, text="bad request")
        if parsed.choices:
            try:
                await on_choices(parsed.choices)
            except Exception:
                log.exception("wechat template choices not stored (%d)", len(parsed.choices))
                return web.Response(status=500, text="retry")  # not 200: WeChat pushes again
            log.info("wechat template choices stored: %d accepted, %d refused",
                     sum(c.accepted for c in parsed.choices), sum(not c.accepted for c in parsed.choices))
        if not await store_once(Vendor.WECHAT, parsed.receipts, on_receipts, memory):
            return web.Response(status=500, text="retry")
        return web.Response(text="success")

    return [web.get(path, verify), web.post(path, push)]
