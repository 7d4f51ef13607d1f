"""A service process refuses to start with a clear message, before connecting to anything,
when its settings or its schema cannot work; migrations never wait forever on a lock."""
import asyncio
import base64
import os
import subprocess
import sys
import time
import urllib.request
import uuid

import asyncpg
import pytest

from services.common import db
from services.common.localstack import free_port
from tests.support.slow_service import build as slow_build
from tests.support.stack import REPO, running_service, wait_serving


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PII_", "AUTH_", "ALIYUN_", "TENCENT_", "WECHAT_", "SMS_", "NOTIFY_"))}
    env.update(PYTHONPATH=f"{REPO / 'gen'}:{REPO}", METRICS_PORT="0", **values)
    return env


def _run(service: str, env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"services.{service}", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_bad_settings_are_all_named_at_once_before_connecting(tmp_path):
    raw_key = base64.b64encode(os.urandom(32)).decode()
    env = _env(DEV_MODE="0", DATA_DIR=str(tmp_path),
               # Nothing listens there: a start that tried to connect would fail differently.
               DATABASE_URL="postgresql://svc:hunter2@127.0.0.1:9/x", NATS_URL="nats://127.0.0.1:9",
               GRPC_PORT="six", NOTIFY_REMINDER_DAY_BEFORE_AT="18", PII_ENCRYPTION_KEYS=raw_key,
               ALIYUN_ACCESS_KEY_ID="LTAI-id", ALIYUN_ACCESS_KEY_SECRET="ak-secret",
               ALIYUN_SMS_SIGN_NAME="县医共体", ALIYUN_SMS_ENDPOINT="dysmsapi.aliyuncs.com")
    began = time.monotonic()
    result = _run("notify", env)
    assert result.returncode == 1, result
    assert time.monotonic() - began < 30
    err = result.stderr
    assert "Traceback" not in err, err
    for name in ("GRPC_PORT", "AUTH_JWT_PUBLIC_KEYS", "PII_ENCRYPTION_KEYS", "PII_HASH_KEY",
                 "NOTIFY_REMINDER_DAY_BEFORE_AT", "ALIYUN_SMS_ENDPOINT"):
        assert f"  - {name}" in err, (name, err)
    assert "notify: not started, 6 setting(s) to fix" in err
    assert raw_key not in err and "hunter2" not in err and "ak-secret" not in err


@pytest.fixture
async def fresh_database(stack):
    """An empty database on the session's server: a service's schema not migrated yet."""
    name = f"fresh_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(stack.database_url)
    await conn.execute(f"CREATE DATABASE {name}")
    try:
        yield stack.database_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await conn.close()


async def test_without_migrate_on_start_a_behind_schema_is_refused(stack, fresh_database):
    env = _env(DEV_MODE="1", DATA_DIR=str(stack.data_dir), DATABASE_URL=fresh_database, NATS_URL=stack.nats_url,
               GRPC_PORT=str(free_port()), MIGRATE_ON_START="false")
    refused = await asyncio.to_thread(_run, "referral", env, timeout=60)
    assert refused.returncode == 1, refused
    assert "Traceback" not in refused.stderr
    assert "referral: not started: schema referral is behind this code" in refused.stderr
    assert "common/001_outbox_inbox.sql" in refused.stderr and "migrate" in refused.stderr
    assert await db.pending(fresh_database, "referral") != []  # it changed nothing

    migrated = await asyncio.to_thread(_run, "referral", env, "migrate")
    assert migrated.returncode == 0, migrated
    assert await db.pending(fresh_database, "referral") == []
    # Current: it starts without migrating.
    async with running_service(stack, "referral", slow_build, database_url=fresh_database,
                               migrate_on_start=False) as svc:
        await wait_serving(svc.port)


async def test_a_migration_waiting_on_a_table_lock_gives_up(stack, tmp_path, monkeypatch):
    schema = f"lk_{uuid.uuid4().hex[:8]}"
    (tmp_path / "001_alter.sql").write_text("ALTER TABLE held ADD COLUMN note text;")
    monkeypatch.setattr(db, "migration_dirs", lambda service: [("t", tmp_path)])
    holder = await asyncpg.connect(stack.database_url)
    try:
        await holder.execute(f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.held (id int)")
        # Live traffic reading the table: ALTER needs it alone and would queue every query behind it.
        tx = holder.transaction()
        await tx.start()
        await holder.execute(f"SELECT * FROM {schema}.held")
        began = time.monotonic()
        with pytest.raises(db.MigrationError, match="waited more than 5 s for a lock"):
            await asyncio.wait_for(db.migrate(stack.database_url, schema, schema), 30)
        assert time.monotonic() - began < 10
        await tx.rollback()
        assert await db.migrate(stack.database_url, schema, schema) == ["t/001_alter.sql"]
    finally:
        await holder.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await holder.close()


async def test_metrics_answer_on_ipv4_and_ipv6(stack):
    port = free_port()
    async with running_service(stack, "referral", slow_build, metrics_port=port):
        for host in ("127.0.0.1", "[::1]"):
            body = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode())
            assert "grpc_server_started_total" in body
