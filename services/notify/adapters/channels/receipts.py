"""Delivery receipts from Aliyun (SmsReport, HTTP batch push) and Tencent (SMS status callback).

Both vendors POST a JSON array and retry when the answer is not what they expect:
Aliyun wants HTTP 200 with ``{"code": 0, "msg": ...}`` (it checks only that code is a
number; 5xx asks for a retry), Tencent wants ``{"result": 0, "errmsg": "OK"}``.
Neither promises exactly-once delivery, so receipts carry a ``dedup_key``.
"""

from __future__ import annotations

import enum
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp import web

from .base import mask_phone, normalize_cn_mobile

log = logging.getLogger("notify.channels.receipts")

# Both vendors report Beijing wall-clock times without an offset.
BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")


class Vendor(enum.StrEnum):
    ALIYUN = "aliyun"
    TENCENT = "tencent"
    WECHAT = "wechat"  # send results pushed to the account's server URL (wechat_events)


PhoneHasher = Callable[[str], str]
"""Keyed hash of a number, e.g. ``PiiCipher.lookup_hash``: receipts then match the stored
deliveries by the same hash and the number itself is never kept."""


class ReceiptFormatError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Receipt:
    vendor: Vendor
    vendor_message_id: str  # Aliyun biz_id / Tencent sid (= SerialNo of the send)
    out_id: str | None  # Aliyun out_id; Tencent's callback does not echo SessionContext
    phone_masked: str
    phone_hash: str  # the deployment's PII lookup hash of the 11-digit number
    delivered: bool
    code: str  # carrier status, e.g. DELIVERED / DELIVRD / MK:0001
    reported_at: datetime | None

    @property
    def dedup_key(self) -> tuple[str, str, str, str]:
        return (self.vendor.value, self.vendor_message_id, self.phone_hash, self.code)


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.strptime(str(value), "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
    except ValueError:
        return None


def _items(payload: Any) -> list[dict]:
    if isinstance(payload, dict):  # tolerate a single object where an array is documented
        payload = [payload]
    if not isinstance(payload, list) or not all(isinstance(i, dict) for i in payload):
        raise ReceiptFormatError("expected a JSON array of objects")
    return payload


def _require(item: dict, *names: str) -> None:
    missing = [n for n in names if item.get(n) in (None, "")]
    if missing:
        raise ReceiptFormatError(f"missing {', '.join(missing)}")


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where one vendor keeps each receipt field."""

    vendor: Vendor
    phone: str
    message_id: str
    status: str
    delivered: Callable[[Any], bool]
    code: str
    time: str
    out_id: str | None


ALIYUN_LAYOUT = _Layout(Vendor.ALIYUN, "phone_number", "biz_id", "success",
                        lambda v: v is True or str(v).lower() == "true", "err_code", "report_time", "out_id")
TENCENT_LAYOUT = _Layout(Vendor.TENCENT, "mobile", "sid", "report_status",
                         lambda v: str(v).upper() == "SUCCESS", "errmsg", "user_receive_time", None)


def _parse(layout: _Layout, payload: Any, phone_hasher: PhoneHasher) -> list[Receipt]:
    receipts = []
    for item in _items(payload):
        _require(item, layout.phone, layout.message_id, layout.status)
        phone = str(item[layout.phone])
        out_id = item.get(layout.out_id) if layout.out_id else None
        receipts.append(Receipt(
            vendor=layout.vendor,
            vendor_message_id=str(item[layout.message_id]),
            out_id=str(out_id) if out_id else None,
            phone_masked=mask_phone(phone),
            phone_hash=phone_hasher(normalize_cn_mobile(phone)),
            delivered=layout.delivered(item[layout.status]),
            code=str(item.get(layout.code) or ""),
            reported_at=_time(item.get(layout.time)),
        ))
    return receipts


def parse_aliyun_receipts(payload: Any, *, phone_hasher: PhoneHasher) -> list[Receipt]:
    return _parse(ALIYUN_LAYOUT, payload, phone_hasher)


def parse_tencent_receipts(payload: Any, *, phone_hasher: PhoneHasher) -> list[Receipt]:
    return _parse(TENCENT_LAYOUT, payload, phone_hasher)


PARSERS: dict[Vendor, Callable[..., list[Receipt]]] = {
    Vendor.ALIYUN: parse_aliyun_receipts,
    Vendor.TENCENT: parse_tencent_receipts,
}


def vendor_reply(vendor: Vendor, ok: bool, error: str = "") -> tuple[int, dict]:
    """HTTP status and body the vendor expects; a failure asks it to push again."""
    if vendor is Vendor.ALIYUN:
        return (200, {"code": 0, "msg": "接收成功"}) if ok else (500, {"code": 1, "msg": error or "处理失败"})
    return (200, {"result": 0, "errmsg": "OK"}) if ok else (500, {"result": 1, "errmsg": error or "处理失败"})


class RecentKeys:
    """Bounded memory of processed receipts.

    It absorbs the vendors' immediate re-pushes; the delivery store must still apply
    a receipt idempotently by ``dedup_key`` because replicas do not share this memory.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self._keys: OrderedDict[tuple, None] = OrderedDict()
        self._capacity = capacity

    def fresh(self, receipts: Iterable[Receipt]) -> list[Receipt]:
        seen_here: set[tuple] = set()
        out = []
        for receipt in receipts:
            key = receipt.dedup_key
            if key in self._keys or key in seen_here:
                continue
            seen_here.add(key)
            out.append(receipt)
        return out

    def remember(self, receipts: Iterable[Receipt]) -> None:
        for receipt in receipts:
            self._keys[receipt.dedup_key] = None
            self._keys.move_to_end(receipt.dedup_key)
        while len(self._keys) > self._capacity:
            self._keys.popitem(last=False)


OnReceipts = Callable[[list[Receipt]], Awaitable[None]]


def receipt_handler(
    vendor: Vendor | str,
    on_receipts: OnReceipts,
    *,
    phone_hasher: PhoneHasher,
    recent: RecentKeys | None = None,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler for one vendor's receipt callback."""
    vendor = Vendor(vendor)
    parse = PARSERS[vendor]
    memory = recent or RecentKeys()

    async def handle(request: web.Request) -> web.Response:
        try:
            payload = json.loads(await request.read())
            receipts = parse(payload, phone_hasher=phone_hasher)
        except (ValueError, ReceiptFormatError) as exc:
            log.warning("%s receipt rejected: %s", vendor.value, exc)
            _, body = vendor_reply(vendor, False, "格式错误")
            # A malformed push will not improve on retry; 400 says so without inviting one.
            return _reply(400, body)
        if not await store_once(vendor, receipts, on_receipts, memory):
            return _reply(*vendor_reply(vendor, False))
        return _reply(*vendor_reply(vendor, True))

    return handle


async def store_once(vendor: Vendor, receipts: list[Receipt], on_receipts: OnReceipts, memory: RecentKeys) -> bool:
    """Hand the receipts not seen lately to the store; False when it failed (the vendor is then
    asked to push again, and they stay unremembered)."""
    fresh = memory.fresh(receipts)
    if fresh:
        try:
            await on_receipts(fresh)
        except Exception:
            log.exception("%s receipt callback failed for %d receipts", vendor.value, len(fresh))
            return False
        memory.remember(fresh)
    fresh_ids = {id(r) for r in fresh}
    for receipt in receipts:
        log.info(
            "%s receipt id=%s recipient=%s delivered=%s code=%s duplicate=%s",
            vendor.value, receipt.vendor_message_id, receipt.phone_masked,
            receipt.delivered, receipt.code, id(receipt) not in fresh_ids,
        )
    return True


def receipt_routes(
    on_receipts: OnReceipts,
    *,
    phone_hasher: PhoneHasher,
    prefix: str = "/receipts",
    recent: RecentKeys | None = None,
) -> list[web.RouteDef]:
    """``POST {prefix}/aliyun`` and ``POST {prefix}/tencent`` sharing one dedup memory."""
    memory = recent or RecentKeys()
    return [
        web.post(f"{prefix}/{vendor.value}",
                 receipt_handler(vendor, on_receipts, phone_hasher=phone_hasher, recent=memory))
        for vendor in PARSERS
    ]


def _reply(status: int, body: dict) -> web.Response:
    # Chinese texts stay readable in the vendors' delivery logs.
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False))
