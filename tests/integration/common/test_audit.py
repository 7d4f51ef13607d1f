import asyncpg
import pytest

from services.common import audit
from services.common.auth import Caller, Role


async def test_audit_rows_are_append_only(pool):
    caller = Caller(subject="dr-li", institution_id="CLINIC01", role=Role.CLINIC_DOCTOR)
    async with pool.acquire() as conn, conn.transaction():
        await audit.record(conn, caller, "GetReferral", "referrals/r1", "p-hash-1")
        await audit.record_many(conn, caller, "ListReferrals", [("referrals/r2", "p2"), ("referrals/r3", "p3")])
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == 3
    for statement in ("UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await pool.execute(statement)
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == 3
