"""Retention of the watch change log (`referral_changes`).

A background job deletes the rows older than the retention, per consortium by
sequence, and records the highest purged sequence on the consortium
(`changes_purged_through`). A watch resuming from a cursor below that mark would miss
changes, so it fails with FAILED_PRECONDITION instead of silently skipping them.
"""
from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from services.common.errors import FailedPrecondition

EXPIRED_MESSAGE = "cursor expired, resync with ListReferrals"
BATCH = 200  # change-log rows a watch reads at a time


async def purge(pool: asyncpg.Pool, now: datetime, retention: timedelta, batch: int = 5000) -> int:
    """Delete change-log rows older than `retention`; returns how many."""
    cutoff = now - retention
    total = 0
    async with pool.acquire() as conn:
        consortiums = [r["consortium_id"] for r in await conn.fetch(
            "SELECT DISTINCT consortium_id FROM consortiums")]
    for consortium_id in consortiums:
        while True:
            async with pool.acquire() as conn, conn.transaction():
                # By sequence, so that "everything up to N is gone" is exact even though a
                # row's created_at (its transaction's start) is not ordered like seq.
                cut = await conn.fetchval(
                    "SELECT max(seq) FROM (SELECT seq FROM referral_changes WHERE consortium_id = $1 "
                    "AND created_at < $2 ORDER BY seq LIMIT $3) s", consortium_id, cutoff, batch)
                if cut is None:
                    break
                deleted = await conn.execute("DELETE FROM referral_changes WHERE consortium_id = $1 AND seq <= $2",
                                             consortium_id, cut)
                await conn.execute("UPDATE consortiums SET changes_purged_through = GREATEST(changes_purged_through, "
                                   "$2) WHERE consortium_id = $1", consortium_id, cut)
                total += int(deleted.split()[-1])
    return total


async def purged_through(conn: asyncpg.Connection, consortium_id: str) -> int:
    return await conn.fetchval("SELECT changes_purged_through FROM consortiums WHERE consortium_id = $1",
                               consortium_id) or 0


async def changes_after(conn: asyncpg.Connection, consortium_id: str, after: int, institution_id: str | None,
                        limit: int = BATCH) -> list[asyncpg.Record]:
    """The next changes after a cursor, read in one statement with the purge mark, so a
    purge that commits meanwhile cannot make rows vanish unnoticed."""
    rows = await conn.fetch(
        "SELECT c.changes_purged_through AS purged, r.seq, r.payload FROM consortiums c "
        "LEFT JOIN LATERAL (SELECT seq, payload FROM referral_changes x WHERE x.consortium_id = c.consortium_id "
        "AND x.seq > $2 AND ($3::text IS NULL OR x.sending_institution_id = $3 OR x.receiving_institution_id = $3) "
        "ORDER BY x.seq LIMIT $4) r ON true WHERE c.consortium_id = $1", consortium_id, after, institution_id, limit)
    if rows and after < rows[0]["purged"]:
        raise FailedPrecondition(EXPIRED_MESSAGE, reason="CURSOR_EXPIRED")
    return [r for r in rows if r["seq"] is not None]
