"""Use cases: vendor delivery receipts settle SENT deliveries (delivered, fell back or failed),
once; WeChat users' template choices decide which templates WeChat may still carry."""
from __future__ import annotations

from collections.abc import Callable

import asyncpg
from prometheus_client import Counter

from services.common.logging import get_logger
from services.notify.adapters import repository as repo
from services.notify.adapters.channels import Receipt, TemplateChoice
from services.notify.service_layer.dispatch import settle_by_receipt
from services.notify.service_layer.notifications import NotifyConfig

log = get_logger(__name__)

# A template many patients turn off is a template (or a message) to look at again.
CHOICES = Counter("notify_wechat_template_choices_total",
                  "WeChat users' choices per template: accepted, or refused (rejected, or 43101).",
                  ("template_id", "choice"))


async def apply_receipts(pool: asyncpg.Pool, receipts: list[Receipt], cfg: NotifyConfig,
                         on_fallback: Callable[[], None] = lambda: None) -> int:
    """Returns how many deliveries changed. One transaction per batch: all or nothing,
    so a failure makes the vendor push the batch again and the dedup rows stay true.
    `on_fallback` runs after the commit when an undelivered message moved to another channel."""
    changed = 0
    fell_back = False
    now = cfg.clock()
    async with pool.acquire() as conn, conn.transaction():
        for r in receipts:
            fresh = await repo.record_receipt(conn, vendor=r.vendor.value, vendor_message_id=r.vendor_message_id,
                                              phone_hash=r.phone_hash, code=r.code, delivered=r.delivered)
            if not fresh:
                continue
            delivery = await repo.find_delivery_for_receipt(conn, r.vendor.value, r.vendor_message_id, r.out_id)
            if delivery is None:
                # Kept unlinked: the send's own record may still be on its way (see dispatch).
                log.info("receipt for an unknown delivery kept", vendor=r.vendor.value, vendor_id=r.vendor_message_id)
                continue
            await repo.link_receipt(conn, r.vendor.value, r.vendor_message_id, r.phone_hash, r.code, delivery["id"])
            moved, fell_back_to = await settle_by_receipt(conn, delivery, r.delivered, r.code,
                                                          r.reported_at or now, now, cfg)
            changed += moved
            fell_back = fell_back or fell_back_to is not None
    if fell_back:
        on_fallback()
    return changed


async def apply_wechat_choices(pool: asyncpg.Pool, choices: list[TemplateChoice]) -> None:
    """Refusals and acceptances, per openid and template; a message already planned for a
    template refused since is sent by SMS when its turn comes (dispatch checks again)."""
    async with pool.acquire() as conn:
        await repo.record_wechat_choices(conn, [(c.openid, c.template_id, c.accepted, c.decided_at) for c in choices])
    for c in choices:
        CHOICES.labels(c.template_id, "accepted" if c.accepted else "refused").inc()
