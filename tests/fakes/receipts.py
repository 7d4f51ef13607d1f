"""Delivery receipts pushed the way the SMS vendors push them, for the harnesses.

Aliyun (SmsReport over HTTP) and Tencent (the SMS status callback) report each message's
fate a few seconds after accepting it, in batches, to the callback URL configured in
their consoles, and push a batch again until the callback answers that it took it.
`ReceiptPusher` does that for the messages the fakes accepted, so that `make run`,
`make demo` and the end-to-end tests see messages delivered, and some undelivered, as a
consortium's office would.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aiohttp

from tests.fakes import FakeVendorServer
from tests.fakes.aliyun_sms import FakeAliyunSms
from tests.fakes.tencent_sms import FakeTencentSms


def switched_off(phone: str) -> bool:
    """About one phone in a hundred does not take its message (switched off, out of
    service): the share real SMS receipts report."""
    return phone.endswith("00")


def _taken(vendor: FakeVendorServer, status: int, body: object) -> bool:
    """Whether the callback's answer tells the vendor to stop pushing the batch."""
    if status != 200 or not isinstance(body, dict):
        return False
    if isinstance(vendor, FakeAliyunSms):
        return body.get("code") == 0
    return body.get("result") == 0


class ReceiptPusher:
    def __init__(self, aliyun: FakeAliyunSms, tencent: FakeTencentSms, callback_base: str, *,
                 interval: float = 1.0, undelivered: Callable[[str], bool] = switched_off) -> None:
        self._vendors = {"aliyun": aliyun, "tencent": tencent}
        self._base = callback_base.rstrip("/")
        self._interval = interval
        self._undelivered = undelivered
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
        """One batch per vendor of what it accepted since the last batch the callback took."""
        pushed = 0
        for name, vendor in self._vendors.items():
            records = vendor.accepted[self._reported[name]:]
            if not records:
                continue
            items = [self._receipt(vendor, r) for r in records]
            try:
                status, body = await vendor.post_receipts(f"{self._base}/{name}", items)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                continue  # not listening yet, or restarting: the vendor pushes again later
            if _taken(vendor, status, body):
                self._reported[name] += len(records)
                pushed += len(records)
        self.pushed += pushed
        return pushed

    def _receipt(self, vendor: FakeVendorServer, record: dict) -> dict:
        delivered = not self._undelivered(record["phone"])
        return vendor.receipt_for(record, delivered=delivered)  # type: ignore[attr-defined]
