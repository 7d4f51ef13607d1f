import uuid

import asyncpg

from services.common import db


async def test_migrations_apply_once_and_concurrently(stack):
    schema = f"m_{uuid.uuid4().hex[:8]}"
    import asyncio
    first = await asyncio.gather(*(db.migrate(stack.database_url, schema, schema) for _ in range(3)))
    applied = [versions for versions in first if versions]
    assert len(applied) == 1 and "common/001_outbox_inbox.sql" in applied[0]
    assert await db.migrate(stack.database_url, schema, schema) == []
    conn = await asyncpg.connect(stack.database_url)
    try:
        tables = {r["table_name"] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema)}
        assert {"outbox", "inbox", "dead_letters", "schema_migrations"} <= tables
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()
