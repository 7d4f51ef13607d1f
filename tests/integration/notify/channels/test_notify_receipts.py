"""Receipt callbacks: the fakes push in their vendor's format to the real aiohttp handler."""

from __future__ import annotations

from datetime import datetime

import pytest
from aiohttp import web
from notify_channels_support import PHONE

from services.notify.adapters.channels import (
    Receipt,
    SmsMessage,
    Vendor,
    parse_aliyun_receipts,
    parse_tencent_receipts,
    receipt_routes,
)
from services.common.pii import PiiCipher
from tests.fakes.receipts import ReceiptPusher

CIPHER = PiiCipher({"k1": b"k" * 32}, hash_key=b"receipt-hash-key")


class Sink:
    """Stands in for the delivery store; can be told to fail the next call."""

    def __init__(self) -> None:
        self.batches: list[list[Receipt]] = []
        self.fail_once = False

    async def __call__(self, receipts: list[Receipt]) -> None:
        if self.fail_once:
            self.fail_once = False
            raise RuntimeError("database unavailable")
        self.batches.append(receipts)


@pytest.fixture
async def endpoint():
    sink = Sink()
    app = web.Application()
    app.add_routes(receipt_routes(sink, phone_hasher=CIPHER.lookup_hash))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/receipts", sink
    await runner.cleanup()


async def test_aliyun_receipt_is_parsed_and_acknowledged(aliyun, aliyun_fake, endpoint):
    url, sink = endpoint
    sent = await aliyun.send(SmsMessage(PHONE, "SMS_465000001", {"hospital": "县医院", "time": "上午"}, "dlv-7"))
    record = aliyun_fake.accepted[0]

    status, body = await aliyun_fake.post_receipts(f"{url}/aliyun", [aliyun_fake.receipt_for(record)])

    assert (status, body) == (200, {"code": 0, "msg": "接收成功"})
    [[receipt]] = sink.batches
    assert receipt.vendor is Vendor.ALIYUN
    assert receipt.vendor_message_id == sent.vendor_message_id and receipt.out_id == "dlv-7"
    assert receipt.delivered and receipt.code == "DELIVERED"
    assert receipt.phone_masked == "138****5678" and receipt.phone_hash == CIPHER.lookup_hash(PHONE)
    assert isinstance(receipt.reported_at, datetime) and receipt.reported_at.utcoffset().total_seconds() == 8 * 3600


async def test_tencent_receipt_is_parsed_and_acknowledged(tencent, tencent_fake, endpoint):
    url, sink = endpoint
    sent = await tencent.send(SmsMessage(PHONE, "2100001", {"a": "县医院", "b": "上午"}, "dlv-8"))
    record = tencent_fake.accepted[0]

    status, body = await tencent_fake.post_receipts(
        f"{url}/tencent", [tencent_fake.receipt_for(record, delivered=False, errmsg="MK:0005")]
    )

    assert (status, body) == (200, {"result": 0, "errmsg": "OK"})
    [[receipt]] = sink.batches
    assert receipt.vendor is Vendor.TENCENT and receipt.vendor_message_id == sent.vendor_message_id
    assert not receipt.delivered and receipt.code == "MK:0005" and receipt.phone_masked == "138****5678"


async def test_duplicates_within_and_across_pushes_reach_the_store_once(aliyun, aliyun_fake, endpoint):
    url, sink = endpoint
    await aliyun.send(SmsMessage(PHONE, "SMS_465000001", {"hospital": "县医院", "time": "上午"}, "dlv-9"))
    item = aliyun_fake.receipt_for(aliyun_fake.accepted[0])

    first = await aliyun_fake.post_receipts(f"{url}/aliyun", [item, item])
    again = await aliyun_fake.post_receipts(f"{url}/aliyun", [item])

    assert first[0] == again[0] == 200
    assert [len(batch) for batch in sink.batches] == [1]


async def test_store_failure_asks_the_vendor_to_push_again(tencent, tencent_fake, endpoint):
    url, sink = endpoint
    await tencent.send(SmsMessage(PHONE, "2100001", {"a": "县医院", "b": "上午"}))
    item = tencent_fake.receipt_for(tencent_fake.accepted[0])
    sink.fail_once = True

    failed = await tencent_fake.post_receipts(f"{url}/tencent", [item])
    retried = await tencent_fake.post_receipts(f"{url}/tencent", [item])

    assert failed[0] == 500 and failed[1]["result"] != 0
    assert retried == (200, {"result": 0, "errmsg": "OK"})
    assert len(sink.batches) == 1  # the failed push was not remembered as processed


async def test_malformed_push_is_refused(aliyun_fake, endpoint):
    url, sink = endpoint
    status, body = await aliyun_fake.post_receipts(f"{url}/aliyun", [{"phone_number": PHONE}])
    assert status == 400 and body["code"] != 0
    assert sink.batches == []


def test_pure_parsers_accept_the_documented_examples():
    aliyun = parse_aliyun_receipts([{
        "phone_number": "13811112222", "send_time": "2017-01-01 00:00:00", "report_time": "2017-01-01 00:00:00",
        "success": True, "err_code": "DELIVERED", "err_msg": "用户接收成功", "sms_size": "1",
        "biz_id": "12345", "out_id": "67890",
    }], phone_hasher=CIPHER.lookup_hash)
    tencent = parse_tencent_receipts([{
        "user_receive_time": "2015-10-17 08:03:04", "nationcode": "86", "mobile": "13811112222",
        "report_status": "SUCCESS", "errmsg": "DELIVRD", "description": "用户短信送达成功", "sid": "xxxxxxx",
    }], phone_hasher=CIPHER.lookup_hash)
    assert (aliyun[0].vendor_message_id, aliyun[0].out_id, aliyun[0].delivered) == ("12345", "67890", True)
    assert (tencent[0].vendor_message_id, tencent[0].out_id, tencent[0].delivered) == ("xxxxxxx", None, True)
    assert aliyun[0].reported_at.isoformat() == "2017-01-01T00:00:00+08:00"


async def test_the_harnesses_receipt_pusher_reports_every_sms_once_and_pushes_again_when_refused(
        aliyun, aliyun_fake, tencent, tencent_fake, endpoint):
    url, sink = endpoint
    off = "13800000100"  # ends in 00: switched off
    await aliyun.send(SmsMessage(PHONE, "SMS_465000001", {"hospital": "县医院", "time": "上午"}, "dlv-1"))
    await aliyun.send(SmsMessage(off, "SMS_465000001", {"hospital": "县医院", "time": "下午"}, "dlv-2"))
    await tencent.send(SmsMessage(PHONE, "2100001", {"a": "县医院", "b": "上午"}, "dlv-3"))
    pusher = ReceiptPusher(aliyun_fake, tencent_fake, url.removesuffix("/receipts"))

    sink.fail_once = True  # the callback cannot store the first batch: it is pushed again
    assert await pusher.push_once() == 1  # aliyun's batch refused, tencent's taken
    assert await pusher.push_once() == 2
    assert await pusher.push_once() == 0  # nothing new
    receipts = [r for batch in sink.batches for r in batch]
    by_id = {r.out_id or r.vendor_message_id: r for r in receipts}
    assert len(receipts) == 3 and by_id["dlv-1"].delivered and not by_id["dlv-2"].delivered
    assert [r.vendor for r in sink.batches[0]] == [Vendor.TENCENT] and by_id["dlv-1"].vendor is Vendor.ALIYUN
