"""WeChat's pushes to the account's server URL (消息推送), read as delivery receipts.

WeChat accepts a subscribe message synchronously (``msgid``) and reports later whether it
reached the user: ``subscribe_msg_sent_event``, one ``List`` entry per message with
``MsgID``, ``ErrorCode`` (0 when delivered; 43101 when the user refuses the account's
messages) and ``ErrorStatus``. WeChat proves a push is its own by
``signature = sha1(sorted(token, timestamp, nonce))`` in the query string, with the token
set in its console, verifies the URL once by a GET that must echo ``echostr``, waits about
5 s for an answer and pushes up to three times; any 200 answer (``success``) ends it.

Plaintext and compatible mode are read; a safe-mode-only push (AES body, no plaintext
fields) is refused with 400, so the console must not be set to safe mode alone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree

from aiohttp import web

from .receipts import OnReceipts, PhoneHasher, Receipt, ReceiptFormatError, RecentKeys, Vendor, store_once

log = logging.getLogger("notify.channels.wechat_events")

SENT_EVENT = "subscribe_msg_sent_event"
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
    event = root.find("SubscribeMsgSentEvent")
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
    if entries is None and isinstance(fields.get("SubscribeMsgSentEvent"), dict):
        entries = fields["SubscribeMsgSentEvent"].get("List")
    fields["List"] = [entries] if isinstance(entries, dict) else entries or []
    return fields


def parse_wechat_push(body: bytes, *, openid_hasher: PhoneHasher) -> list[Receipt]:
    """The send results a push carries; other events (menu clicks, subscriptions) carry none."""
    fields = _json_fields(body) if body.lstrip()[:1] == b"{" else _xml_fields(body)
    if fields.get("Encrypt") and not fields.get("MsgType"):
        raise ReceiptFormatError("safe-mode push: set the console to plaintext or compatible mode")
    if fields.get("MsgType") != "event" or fields.get("Event") != SENT_EVENT:
        return []
    openid = str(fields.get("FromUserName") or "")
    if not openid:
        raise ReceiptFormatError("missing FromUserName")
    try:
        created = fields.get("CreateTime")
        reported_at = datetime.fromtimestamp(int(created), UTC) if created else None
    except (TypeError, ValueError, OverflowError):
        reported_at = None
    receipts = []
    for entry in fields["List"]:
        if not isinstance(entry, dict) or not entry.get("MsgID") or entry.get("ErrorCode") in (None, ""):
            raise ReceiptFormatError("a List entry without MsgID or ErrorCode")
        code = str(entry["ErrorCode"])
        receipts.append(Receipt(
            vendor=Vendor.WECHAT, vendor_message_id=str(entry["MsgID"]), out_id=None,
            phone_masked=openid[:6] + "****", phone_hash=openid_hasher(openid),
            delivered=code == "0", code=code, reported_at=reported_at))
    return receipts


def wechat_event_routes(on_receipts: OnReceipts, *, token: str, openid_hasher: PhoneHasher,
                        recent: RecentKeys | None = None, path: str = "/wechat/events") -> list[web.RouteDef]:
    """``GET path`` (WeChat's URL check) and ``POST path`` (its pushes), both signed with `token`."""
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
            receipts = parse_wechat_push(await request.read(), openid_hasher=openid_hasher)
        except ReceiptFormatError as exc:
            log.warning("wechat push rejected: %s", exc)
            return web.Response(status=400, text="bad request")
        if not await store_once(Vendor.WECHAT, receipts, on_receipts, memory):
            return web.Response(status=500, text="retry")  # not 200: WeChat pushes again
        return web.Response(text="success")

    return [web.get(path, verify), web.post(path, push)]
