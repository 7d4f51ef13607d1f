"""Delivery receipts pushed the way the vendors push them, for the harnesses.

Aliyun (SmsReport over HTTP) and Tencent (the SMS status callback) report each message's
fate a few seconds after accepting it, in batches, to the callback URL configured in
their consoles, and push a batch again until the callback answers that it took it;
WeChat pushes each subscribe message's send result (subscribe_msg_sent_event) to the
account's server URL, signed with the console's token. `ReceiptPusher` does that for the
messages the fakes accepted, so that `make run`, `make demo` and the end-to-end tests see
messages delivered, and some not, as a consortium's office would.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aiohttp

from tests.fakes import FakeVendorServer
from tests.fakes.aliyun_sms import FakeAliyunSms
from tests.fakes.tencent_sms import FakeTencentSms
from tests.fakes.wechat import FakeWeChat


def switched_off(phone: str) -> bool:
    """About one phone in a hundred does not take its message (switched off, out of
    service): the share real SMS receipts report."""
    return phone.endswith("00")


def blocked(openid: str) -> bool:
    """About one WeChat user in 250 has refused the account's messages since subscribing."""
    return openid.endswith("00")


WECHAT_REFUSED = 43101


def _taken(vendor: FakeVendorServer, status: int, body: object) -> bool:
    """Whether the callback's answer tells the vendor to stop pushing the batch."""
    if status != 200 or not isinstance(body, dict):
        return False
    if isinstance(vendor, FakeAliyunSms):
        return body.get("code") == 0
    return body.get("result") == 0


class ReceiptPusher:
    """`notify_base`: notify's receipts server, e.g. http://127.0.0.1:8080. With `wechat` and
    `wechat_token`, WeChat's send results go to its /wechat/events too."""

    def __init__(self, aliyun: FakeAliyunSms, tencent: FakeTencentSms, notify_base: str, *,
                 wechat: FakeWeChat | None = None, wechat_token: str = "", interval: float = 1.0,
                 undelivered: Callable[[str], bool] = switched_off, refused: Callable[[str], bool] = blocked) -> None:
        self._vendors: dict[str, FakeVendorServer] = {"aliyun": aliyun, "tencent": tencent}
        if wechat is not None and wechat_token:
            self._vendors["wechat"] = wechat
        self._base = notify_base.rstrip("/")
        self._token = wechat_token
        self._interval = interval
        self._undelivered = undelivered
        self._refused = refused
        self._reported = {name: 0 for name in self._vendors}  # accepted records already reported
        self._task: asyncio.Task | None = None
        self.pushed = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="receipt-pusher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.push_once()

    async def push_once(self) -> int:
        """What each vendor accepted since its last push the callback took: one batch per SMS
        vendor, one push per WeChat message (as WeChat sends them)."""
        pushed = 0
        for name, vendor in self._vendors.items():
            records = vendor.accepted[self._reported[name]:]
            if not records:
                continue
            if isinstance(vendor, FakeWeChat):
                taken = await self._push_wechat(vendor, records)
            else:
                taken = await self._push_sms(name, vendor, records)
            self._reported[name] += taken
            pushed += taken
        self.pushed += pushed
        return pushed

    async def _push_sms(self, name: str, vendor: FakeVendorServer, records: list[dict]) -> int:
        items = [vendor.receipt_for(r, delivered=not self._undelivered(r["phone"]))  # type: ignore[attr-defined]
                 for r in records]
        try:
            status, body = await vendor.post_receipts(f"{self._base}/receipts/{name}", items)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            return 0  # not listening yet, or restarting: the vendor pushes again later
        return len(records) if _taken(vendor, status, body) else 0

    async def _push_wechat(self, wechat: FakeWeChat, records: list[dict]) -> int:
        taken = 0
        for record in records:
            body = wechat.sent_event(record, error_code=WECHAT_REFUSED if self._refused(record["openid"]) else 0)
            try:
                status, _ = await wechat.push_event(f"{self._base}/wechat/events", self._token, body)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                break
            if status != 200:
                break
            taken += 1
        return taken
