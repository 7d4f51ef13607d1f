"""WeChat's server-URL pushes read as receipts and template choices: signatures, formats,
what is ignored."""
from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from services.notify.adapters.channels import TemplateChoice, Vendor, WeChatPush, parse_wechat_push
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
    push = parse_wechat_push(_sent(), openid_hasher=hasher)
    [delivered] = push.receipts
    assert push.choices == []
    assert delivered.vendor is Vendor.WECHAT and delivered.vendor_message_id == "1700827132819554304"
    assert delivered.delivered and delivered.code == "0" and delivered.reported_at.timestamp() == NOW
    assert delivered.phone_hash == hasher(OPENID) and OPENID not in delivered.phone_masked
    push = parse_wechat_push(_sent("43101"), openid_hasher=hasher)
    [refused] = push.receipts
    assert not refused.delivered and refused.code == "43101"
    # 43101: this template's subscription is gone, which is the user's choice as well.
    assert push.choices == [TemplateChoice(OPENID, "T1", False, datetime.fromtimestamp(NOW, UTC))]
    assert parse_wechat_push(_sent("-1"), openid_hasher=hasher).choices == []  # a failure, not a refusal


def test_json_pushes_are_read_like_xml():
    body = (b'{"ToUserName":"gh_1","FromUserName":"' + OPENID.encode() + b'","CreateTime":"1795000000",'
            b'"MsgType":"event","Event":"subscribe_msg_sent_event",'
            b'"List":{"TemplateId":"T1","MsgID":"99","ErrorCode":"0","ErrorStatus":"success"}}')
    [receipt] = parse_wechat_push(body, openid_hasher=hasher).receipts
    assert receipt.vendor_message_id == "99" and receipt.delivered


def test_other_pushes_carry_no_receipt_and_broken_ones_are_refused():
    click = b"<xml><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[CLICK]]></Event></xml>"
    assert parse_wechat_push(click, openid_hasher=hasher) == WeChatPush()
    with pytest.raises(ReceiptFormatError):
        parse_wechat_push(b"<xml><Encrypt><![CDATA[c2FmZQ==]]></Encrypt></xml>", openid_hasher=hasher)
    with pytest.raises(ReceiptFormatError):
        parse_wechat_push(_sent().replace(b"<MsgID>1700827132819554304</MsgID>", b""), openid_hasher=hasher)
    with pytest.raises(ReceiptFormatError):
        parse_wechat_push(b"<xml><unclosed>", openid_hasher=hasher)



def _choice_push(event: str, parent: str, entries: list[tuple[str, str]], *, created: str = f"{NOW}") -> bytes:
    items = "".join(f"<List><TemplateId><![CDATA[{t}]]></TemplateId>"
                    f"<SubscribeStatusString><![CDATA[{status}]]></SubscribeStatusString>"
                    f"<PopupScene>0</PopupScene></List>"
                    for t, status in entries)
    return (f"<xml><ToUserName><![CDATA[gh_123456789abc]]></ToUserName>"
            f"<FromUserName><![CDATA[{OPENID}]]></FromUserName><CreateTime>{created}</CreateTime>"
            f"<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{event}]]></Event>"
            f"<{parent}>{items}</{parent}></xml>").encode()


def test_popup_and_settings_pushes_are_choices_per_template():
    at = datetime.fromtimestamp(NOW, UTC)
    popup = _choice_push("subscribe_msg_popup_event", "SubscribeMsgPopupEvent",
                         [("T1", "accept"), ("T2", "reject"), ("T3", "acceptWithAudio"), ("T4", "ban")])
    # An unknown answer ("ban") is neither: it is left out, not guessed.
    assert parse_wechat_push(popup, openid_hasher=hasher) == WeChatPush(choices=[
        TemplateChoice(OPENID, "T1", True, at), TemplateChoice(OPENID, "T2", False, at),
        TemplateChoice(OPENID, "T3", True, at)])
    settings = _choice_push("subscribe_msg_change_event", "SubscribeMsgChangeEvent", [("T1", "reject")])
    assert parse_wechat_push(settings, openid_hasher=hasher).choices == [TemplateChoice(OPENID, "T1", False, at)]
    # JSON, with a lone entry as an object (as WeChat sends one), and no CreateTime: dated now.
    now = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
    body = (b'{"ToUserName":"gh_1","FromUserName":"' + OPENID.encode() + b'","MsgType":"event",'
            b'"Event":"subscribe_msg_change_event","List":{"SubscribeStatusString":"reject","TemplateId":"T9"}}')
    assert parse_wechat_push(body, openid_hasher=hasher, now=now).choices == [TemplateChoice(OPENID, "T9", False, now)]
    with pytest.raises(ReceiptFormatError):
        parse_wechat_push(_choice_push("subscribe_msg_popup_event", "SubscribeMsgPopupEvent", [("", "accept")]),
                          openid_hasher=hasher)
