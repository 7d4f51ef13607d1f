"""Notification channels: real HTTP clients for WeChat subscribe messages and
Aliyun / Tencent SMS, plus the parsers for their delivery receipts and WeChat's send results."""

from .aliyun_sms import AliyunSmsChannel
from .base import (
    Channel,
    HttpTimeouts,
    SendOutcome,
    SendReport,
    SendStatus,
    SmsMessage,
    StatusQuery,
    StatusQueryFailed,
    WeChatMessage,
    WeChatTarget,
    mask_phone,
)
from .receipts import (
    Receipt,
    RecentKeys,
    Vendor,
    parse_aliyun_receipts,
    parse_tencent_receipts,
    receipt_handler,
    receipt_routes,
    vendor_reply,
)
from .tencent_sms import TencentSmsChannel
from .wechat import StableTokenCache, WeChatSubscribeChannel, validate_subscribe_data
from .wechat_events import TemplateChoice, WeChatPush, parse_wechat_push, wechat_event_routes

__all__ = [
    "AliyunSmsChannel",
    "Channel",
    "HttpTimeouts",
    "Receipt",
    "RecentKeys",
    "SendOutcome",
    "SendReport",
    "SendStatus",
    "SmsMessage",
    "StableTokenCache",
    "StatusQuery",
    "StatusQueryFailed",
    "TemplateChoice",
    "TencentSmsChannel",
    "Vendor",
    "WeChatPush",
    "WeChatMessage",
    "WeChatSubscribeChannel",
    "WeChatTarget",
    "mask_phone",
    "parse_aliyun_receipts",
    "parse_tencent_receipts",
    "parse_wechat_push",
    "receipt_handler",
    "receipt_routes",
    "validate_subscribe_data",
    "vendor_reply",
    "wechat_event_routes",
]
