"""How a service starts, runs and stops: one place for all three.

A service provides `build(ctx) -> ServiceParts` (its gRPC servicers, its event
subscriptions, its periodic jobs); this module owns the order of start and stop:
migrate, pool, broker, relay, consumers, gRPC, and on SIGTERM the reverse — health to
NOT_SERVING, stop taking events, let in-flight calls finish, drain the broker.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg
from prometheus_client import start_http_server

from services.common import auth, config, db, messaging
from services.common import logging as logs
from services.common.consumer import EventConsumer, Subscription
from services.common.grpc_server import GrpcServer, Registrar, server_credentials
from services.common.outbox import OutboxRelay
from services.common.pii import PiiCipher

log = logs.get_logger(__name__)


@dataclass
class AppContext:
    settings: config.Settings
    pool: asyncpg.Pool
    broker: messaging.Broker
    relay: OutboxRelay
    pii: PiiCipher


@dataclass
class ServiceParts:
    registrars: list[Registrar] = field(default_factory=list)
    subscriptions: list[Subscription] = field(default_factory=list)
    # Long-running coroutines (periodic jobs); cancelled at shutdown after consumers stop.
    background: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


Builder = Callable[[AppContext], ServiceParts]


def verifier_for(settings: config.Settings) -> auth.TokenVerifier:
    keys = settings.auth_public_keys
    if not keys:
        if not settings.dev_mode:
            raise SystemExit("AUTH_JWT_PUBLIC_KEYS is required (DEV_MODE=1 generates a local key pair)")
        log.warning("AUTH_JWT_PUBLIC_KEYS unset: using the development key pair")
        keys = auth.dev_keys(settings.data_dir).public_pem
    return auth.TokenVerifier(keys, issuer=settings.auth_issuer, audience=settings.auth_audience)


class ServiceApp:
    def __init__(self, settings: config.Settings, build: Builder) -> None:
        self.settings = settings
        self._build = build
        self.ctx: AppContext | None = None
        self.grpc: GrpcServer | None = None
        self._consumers: list[EventConsumer] = []
        self._tasks: list[asyncio.Task] = []
        self._parts = ServiceParts()

    @property
    def port(self) -> int:
        assert self.grpc is not None
        return self.grpc.port

    async def start(self) -> None:
        s = self.settings
        if not s.database_url or not s.nats_url:
            raise SystemExit("DATABASE_URL and NATS_URL must be set: `make run` starts a local stack "
                             "and sets them for every service")
        await db.migrate(s.database_url, s.schema, s.service)
        pool = await db.create_pool(s.database_url, s.schema, min_size=s.db_pool_min,
                                    max_size=s.db_pool_max, command_timeout=s.db_command_timeout)
        broker = await messaging.Broker.connect(s.nats_url, name=s.service,
                                                stream_replicas=s.nats_stream_replicas)
        await broker.ensure_stream(s.service, s.nats_stream_replicas)
        relay = OutboxRelay(pool, broker, s.schema, dsn=s.database_url, poll_seconds=s.outbox_poll_seconds,
                            retention=timedelta(hours=s.outbox_retention_hours))
        if not s.pii_encryption_keys and not s.dev_mode:
            raise SystemExit("PII_ENCRYPTION_KEYS and PII_HASH_KEY are required (DEV_MODE=1 generates local keys)")
        self.ctx = AppContext(s, pool, broker, relay, PiiCipher.from_config(
            s.pii_encryption_keys, s.pii_hash_key, s.data_dir if s.dev_mode else None))
        self._parts = self._build(self.ctx)
        relay.start()
        for subscription in self._parts.subscriptions:
            consumer = EventConsumer(broker, pool, subscription, max_deliver=s.consumer_max_deliver)
            consumer.start()
            self._consumers.append(consumer)
        for job in self._parts.background:
            self._tasks.append(asyncio.create_task(job()))
        self.grpc = GrpcServer(s.grpc_port, self._parts.registrars, verifier=verifier_for(s),
                               credentials=server_credentials(s.tls_cert_file, s.tls_key_file,
                                                              s.tls_client_ca_file))
        await self.grpc.start()
        if s.metrics_port:
            start_http_server(s.metrics_port, addr="0.0.0.0")
        log.info("service started", grpc_port=self.grpc.port, metrics_port=s.metrics_port)

    async def stop(self) -> None:
        grace = self.settings.shutdown_grace_seconds
        log.info("service stopping", grace_seconds=grace)
        if self.grpc is not None:
            await self.grpc.enter_shutdown()
        await asyncio.gather(*(c.stop() for c in self._consumers), return_exceptions=True)
        if self.grpc is not None:
            await self.grpc.stop(grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for hook in self._parts.on_stop:
            await hook()
        if self.ctx is not None:
            await self.ctx.relay.stop()
            await self.ctx.broker.close()
            await self.ctx.pool.close()
        log.info("service stopped")

    async def run_until_signal(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        await self.stop()


def main(service: str, build: Builder, argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m services.{service}")
    parser.add_argument("command", choices=["serve", "migrate"], nargs="?", default="serve")
    args = parser.parse_args(argv)
    settings = config.load(service)
    logs.configure(settings.log_level, service=service)
    if args.command == "migrate":
        applied = asyncio.run(db.migrate(settings.database_url, settings.schema, service))
        log.info("migrations done", applied=applied)
        return
    try:
        asyncio.run(ServiceApp(settings, build).run_until_signal())
    except KeyboardInterrupt:
        sys.exit(130)
