"""WeChat's server-URL pushes read as receipts: signatures, formats, what is ignored."""
from __future__ import annotations

import hashlib

import pytest

from services.notify.adapters.channels import Vendor, parse_wechat_push
from services.notify.adapters.channels.receipts import ReceiptFormatError
from services.notify.adapters.channels.wechat_events import signature, signature_ok

NOW = 1_795_000_000
OPENID = "oDemo0123456789abcdef012345"


def hasher(value: str) -> str:
    return "h:" + hashlib.sha256(value.encode()).hexdigest()[:16]


def _sent(code: str = "0", *, msgid: str = "1700827132819554304") -> bytes:
    return (f"<xml><ToUserName><![CDATA[gh_123456789abc]]></ToUserName>"
            f"<FromUserName><![CDATA[{OPENID}]]></FromUserName><CreateTime>{NOW}</CreateTime>"
            f"<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe_msg_sent_event]]></Event>"
            f"<SubscribeMsgSentEvent><List><TemplateId><![CDATA[T1]]></TemplateId><MsgID>{msgid}</MsgID>"
            f"<ErrorCode>{code}</ErrorCode><ErrorStatus><![CDATA[success]]></ErrorStatus></List>"
            f"</SubscribeMsgSentEvent></xml>").encode()


def test_signature_is_sha1_of_the_sorted_token_timestamp_and_nonce():
    assert signature("token", "1700000000", "42") == hashlib.sha1(b"170000000042token").hexdigest()
    query = {"signature": signature("token", str(NOW), "42"), "timestamp": str(NOW), "nonce": "42"}
    assert signature_ok("token", query, now=NOW + 30)
    assert not signature_ok("other", query, now=NOW)
    assert not signature_ok("token", {**query, "nonce": "43"}, now=NOW)
    assert not signature_ok("token", query, now=NOW + 3600)  # a replayed push
    assert not signature_ok("", query, now=NOW)  # no token configured: nothing is WeChat's
    assert not signature_ok("token", {**query, "timestamp": "soon"}, now=NOW)


def test_a_sent_event_is_a_receipt_keyed_by_msgid_without_the_openid():
    [delivered] = parse_wechat_push(_sent(), openid_hasher=hasher)
    assert delivered.vendor is Vendor.WECHAT and delivered.vendor_message_id == "1700827132819554304"
    assert delivered.delivered and delivered.code == "0" and delivered.reported_at.timestamp() == NOW
    assert delivered.phone_hash == hasher(OPENID) and OPENID not in delivered.phone_masked
    [refused] = parse_wechat_push(_sent("43101"), openid_hasher=hasher)
    assert not refused.delivered and refused.code == "43101"


def test_json_pushes_are_read_like_xml():
    body = (b'{"ToUserName":"gh_1","FromUserName":"' + OPENID.encode() + b'","CreateTime":"1795000000",'
            b'"MsgType":"event","Event":"subscribe_msg_sent_event",'
            b'"List":{"TemplateId":"T1","MsgID":"99","ErrorCode":"0","ErrorStatus":"success"}}')
    [receipt] = parse_wechat_push(body, openid_hasher=hasher)
    assert receipt.vendor_message_id == "99" and receipt.delivered


def test_other_pushes_carry_no_receipt_and_broken_ones_are_refused():
    click = b"<xml><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[CLICK]]></Event></xml>"
    assert parse_wechat_push(click, openid_hasher=hasher) == []
    with pytest.raises(ReceiptFormatError):
        parse_wechat_push(b"<xml><Encrypt><![CDATA[c2FmZQ==]]></Encrypt></xml>", openid_hasher=hasher)
    with pytest.raises(ReceiptFormatError):
        parse_wechat_push(_sent().replace(b"<MsgID>1700827132819554304</MsgID>", b""), openid_hasher=hasher)
    with pytest.raises(ReceiptFormatError):
        parse_wechat_push(b"<xml><unclosed>", openid_hasher=hasher)
