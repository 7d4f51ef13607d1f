"""Use case: vendor delivery receipts move SENT deliveries to DELIVERED or FAILED, once."""
from __future__ import annotations

import asyncpg

from services.common.logging import get_logger
from services.notify.adapters import repository as repo
from services.notify.adapters.channels import Receipt
from services.notify.service_layer.dispatch import publish_failure
from services.notify.service_layer.notifications import Clock

log = get_logger(__name__)


async def apply_receipts(pool: asyncpg.Pool, receipts: list[Receipt], clock: Clock) -> int:
    """Returns how many deliveries changed. One transaction per batch: all or nothing,
    so a failure makes the vendor push the batch again and the dedup rows stay true."""
    changed = 0
    now = clock()
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
            if await repo.apply_receipt(conn, delivery["id"], r.delivered, r.code, r.reported_at or now):
                changed += 1
                if not r.delivered:
                    notification = await conn.fetchrow("SELECT * FROM notifications WHERE id = $1",
                                                       delivery["notification_id"])
                    await publish_failure(conn, notification, delivery["id"], r.code)
    return changed
