"""How long notify keeps a way to reach a patient.

Notify holds a copy of each patient's mobile number and WeChat openid only to send the
messages of their referrals. Once a patient has had no referral event, no appointment and
no message in flight for the retention (`NOTIFY_CONTACT_RETENTION_DAYS`, 180), the copy
is cleared: the number with its keyed hash, the openid and that openid's template
choices. The patient's preferences stay (a refusal of messages must outlive the number),
and the patient's next referral event brings the number back. A number the desk set
through preferences is cleared the same way, and with it the mark that it outranks the
referral's own: no number is left for the mark to protect.
"""
from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from services.notify.adapters import repository as repo


async def forget_idle_contacts(pool: asyncpg.Pool, now: datetime, retention: timedelta, batch: int = 1000) -> int:
    """Returns how many contacts were cleared, a batch per transaction."""
    total = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            cleared = await repo.clear_idle_contacts(conn, now - retention, batch)
        total += cleared
        if cleared < batch:
            return total
