"""Test helpers for running services against the session's real PostgreSQL and NATS."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import auth, config, db
from services.common.app import Builder, ServiceApp
from services.common.localstack import LocalStack, free_port

REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class TestStack:
    stack: LocalStack
    data_dir: Path
    log_dir: Path

    @property
    def database_url(self) -> str:
        return self.stack.postgres.url

    @property
    def nats_url(self) -> str:
        return self.stack.nats.url

    def settings(self, service: str, **overrides) -> config.Settings:
        base = config.load(service)
        values = dict(database_url=self.database_url, nats_url=self.nats_url, grpc_port=0,
                      metrics_port=0, data_dir=self.data_dir, shutdown_grace_seconds=5.0,
                      outbox_poll_seconds=0.5)
        values.update(overrides)
        return dataclasses.replace(base, **values)

    def env(self, service: str, **extra: str) -> dict[str, str]:
        """Environment for a service run as a separate process."""
        env = dict(os.environ)
        env.update(DATABASE_URL=self.database_url, NATS_URL=self.nats_url, DATA_DIR=str(self.data_dir),
                   PYTHONPATH=f"{REPO / 'gen'}:{REPO}", METRICS_PORT="0", SHUTDOWN_GRACE_SECONDS="5")
        env.update(extra)
        return env

    def token(self, institution_id: str, role: auth.Role | str, **kw) -> str:
        keys = auth.dev_keys(self.data_dir)
        return auth.issue_token(keys.private_pem, institution_id=institution_id, role=role, **kw)

    def metadata(self, institution_id: str, role: auth.Role | str, request_id: str = "") -> tuple:
        md = [("authorization", f"Bearer {self.token(institution_id, role)}")]
        if request_id:
            md.append(("x-request-id", request_id))
        return tuple(md)

    async def reset_schema(self, service: str) -> None:
        """A clean schema for a test module that needs one."""
        conn = await asyncpg.connect(self.database_url)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {service} CASCADE")
        finally:
            await conn.close()
        await db.migrate(self.database_url, service, service)

    async def reset_streams(self) -> None:
        """Empty every service stream and drop its durable consumers, so a test module's
        services see only the events it publishes (the streams live for the session)."""
        from services.common import messaging

        broker = await messaging.Broker.connect(self.nats_url, name="test-reset")
        try:
            await broker.ensure_streams()
            for stream in messaging.STREAMS.values():
                for info in await broker.js.consumers_info(stream):
                    await broker.js.delete_consumer(stream, info.name)
                await broker.js.purge_stream(stream)
        finally:
            await broker.close()

    def spawn(self, module: str, name: str, *args: str, **env: str) -> subprocess.Popen:
        """Run `python -m module args` with its log in the session's log folder."""
        log = open(self.log_dir / f"{name}.log", "ab")
        return subprocess.Popen([sys.executable, "-m", module, *args], env=self.env(name, **env),
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@contextlib.asynccontextmanager
async def running_service(stack: TestStack, service: str, build: Builder, **overrides) -> AsyncIterator[ServiceApp]:
    app = ServiceApp(stack.settings(service, **overrides), build)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def wait_serving(port: int, timeout: float = 30.0, service: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    last: Exception | None = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.aio.AioRpcError as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise TimeoutError(f"port {port} not SERVING after {timeout}s: {last}")


__all__ = ["TestStack", "running_service", "wait_serving", "free_port"]
