"""A delivery's outcome is written only under the claim that holds it."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.common import db as dbs
from services.notify.adapters import repository as repo
from services.notify.domain.model import Channel, DeliveryStatus, Route

LEASE = timedelta(seconds=60)
# Long before any other test's deliveries fall due: the claims below can take this test's only.
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


async def _delivery_due_long_ago(db) -> uuid.UUID:
    route = Route("R" + uuid.uuid4().hex[:12], "P" + uuid.uuid4().hex, "H1", "C1", department="cardiology")
    notification = await repo.insert_notification(
        db, event_id=str(uuid.uuid4()), recipient=route.patient_id, template="referral_accepted", part="",
        version=1, route=route, booking_id="", essential=True, urgent=False, reminder=False,
        params={"dept": "心内科"}, text="您的心内科转诊申请已被医院接收。", channel_plan=[Channel.SMS],
        skip_reason=None, expires_at=None)
    return await repo.insert_delivery(db, notification, Channel.SMS, "aliyun", LONG_AGO)


async def test_a_sender_whose_lease_lapsed_cannot_overwrite_the_next_claims_outcome(stack, db):
    await dbs.migrate(stack.database_url, "notify")
    delivery_id = await _delivery_due_long_ago(db)
    [first] = await repo.claim_due(db, LONG_AGO, LEASE, 10)
    # The first sender still waits for the vendor when its lease lapses and another replica claims.
    [second] = await repo.claim_due(db, LONG_AGO + LEASE + timedelta(seconds=1), LEASE, 10)
    assert first["id"] == second["id"] == delivery_id and first["claim"] != second["claim"]

    # The first sender's answer comes while the second still sends: neither its success nor
    # its retry applies, and the second keeps its claim.
    assert not await repo.finish(db, delivery_id, first["claim"], DeliveryStatus.SENT, vendor_code="OK",
                                 vendor_message_id="late-biz-id")
    assert not await repo.reschedule(db, delivery_id, first["claim"], LONG_AGO, reason="retry: TIMEOUT")
    assert await repo.still_claimed(db, delivery_id, second["claim"])
    assert not await repo.still_claimed(db, delivery_id, first["claim"])
    assert await repo.finish(db, delivery_id, second["claim"], DeliveryStatus.FAILED,
                             reason="PERMANENT isv.BLACK_KEY_CONTROL_LIMIT", vendor_code="isv.BLACK_KEY_CONTROL_LIMIT")
    row = await db.fetchrow("SELECT * FROM deliveries WHERE id = $1", delivery_id)
    assert (row["status"], row["vendor_code"], row["vendor_message_id"], row["attempts"]) == (
        "FAILED", "isv.BLACK_KEY_CONTROL_LIMIT", None, 2)
