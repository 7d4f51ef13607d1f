"""How a service starts, runs and stops: one place for all three.

A service provides `build(ctx) -> ServiceParts` (its gRPC servicers, its event
subscriptions, its periodic jobs); this module owns the order of start and stop:
migrate, pool, broker, relay, consumers, gRPC, and on SIGTERM the reverse — health to
NOT_SERVING, stop taking events, let in-flight calls finish, drain the broker.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import uvloop
from prometheus_client import start_http_server

from services.common import auth, config, db, dead_letters, messaging
from services.common import logging as logs
from services.common.consumer import EventConsumer, Subscription, inbox_retention, purge_inbox
from services.common.grpc_server import GrpcServer, Registrar, server_credentials
from services.common.outbox import OutboxRelay
from services.common.periodic import periodic
from services.common.pii import PiiCipher

log = logs.get_logger(__name__)
T = TypeVar("T")


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
    def __init__(self, settings: config.Settings, build: Builder, *, reuse_port: bool = False) -> None:
        self.settings = settings
        self._build = build
        # Several worker processes serving one port (SO_REUSEPORT): see `main`.
        self._reuse_port = reuse_port
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
                                    max_size=s.db_pool_max, command_timeout=s.db_command_timeout,
                                    acquire_timeout=s.db_acquire_timeout)
        broker = await messaging.Broker.connect(s.nats_url, name=s.service,
                                                stream_replicas=s.nats_stream_replicas)
        await broker.ensure_stream(s.service, s.nats_stream_replicas)
        relay = OutboxRelay(pool, broker, s.schema, dsn=s.database_url, poll_seconds=s.outbox_poll_seconds,
                            retention=s.outbox_retention)
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
        inbox_purge = periodic("inbox purged", s.inbox_purge_seconds, lambda: purge_inbox(
            pool, inbox_retention(s.outbox_retention)))
        for job in (*self._parts.background, inbox_purge):
            self._tasks.append(asyncio.create_task(job()))
        self.grpc = GrpcServer(s.grpc_port, self._parts.registrars, verifier=verifier_for(s),
                               credentials=server_credentials(s.tls_cert_file, s.tls_key_file,
                                                              s.tls_client_ca_file),
                               options=[("grpc.so_reuseport", 1 if self._reuse_port else 0),
                                        ("grpc.max_receive_message_length", 4 << 20)])
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


WORKER_ENV = "SERVICE_WORKER_INDEX"
EVENT_LOOPS = ("uvloop", "asyncio")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a process's main coroutine on the event loop EVENT_LOOP names: uvloop (the
    default; libuv's loop takes about a third less CPU per call than asyncio's on the
    create path, see `make bench`) or asyncio (the standard library's, to rule uvloop out)."""
    name = os.environ.get("EVENT_LOOP", "uvloop")
    if name not in EVENT_LOOPS:
        raise SystemExit(f"EVENT_LOOP must be one of {', '.join(EVENT_LOOPS)}, got {name!r}")
    if name == "uvloop":
        return uvloop.run(main)
    return asyncio.run(main)


def worker_count(settings: config.Settings) -> int:
    """`<SERVICE>_WORKERS` (e.g. REFERRAL_WORKERS), else GRPC_WORKERS, else 1."""
    raw = settings.get(f"{settings.service.upper()}_WORKERS") or settings.get("GRPC_WORKERS") or "1"
    try:
        return max(1, int(raw))
    except ValueError as exc:
        raise SystemExit(f"{settings.service.upper()}_WORKERS / GRPC_WORKERS must be an integer, got {raw!r}") from exc


def _die_with_parent() -> None:
    """A worker must not outlive its supervisor (e.g. SIGKILLed): it would keep the port."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def supervise(settings: config.Settings, workers: int, argv: list[str]) -> int:
    """N copies of this service, each a full replica (its own pool, relay, consumers and
    jobs, all replica-safe as in a cluster) serving the same gRPC port with SO_REUSEPORT;
    the kernel spreads connections over them, so the service uses more than one core (one
    Python process cannot). SIGTERM/SIGINT go to every worker; if one exits, all stop."""
    if not settings.grpc_port:
        raise SystemExit("several workers share one port: GRPC_PORT must not be 0")
    # Migrate once before the workers start (each would wait on the advisory lock anyway).
    asyncio.run(db.migrate(settings.database_url, settings.schema, settings.service))
    procs: list[subprocess.Popen] = []
    for index in range(workers):
        env = {**os.environ, WORKER_ENV: str(index),
               "METRICS_PORT": str(settings.metrics_port + index if settings.metrics_port else 0)}
        procs.append(subprocess.Popen([sys.executable, "-m", f"services.{settings.service}", *argv], env=env))
    log.info("workers started", workers=workers, pids=[p.pid for p in procs], grpc_port=settings.grpc_port)

    def forward(signum, _frame) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    while True:
        exited = [p for p in procs if p.poll() is not None]
        if exited:
            code = code or exited[0].returncode or 0
            forward(signal.SIGTERM, None)
            break
        time.sleep(0.2)
    for proc in procs:
        try:
            proc.wait(settings.shutdown_grace_seconds + 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return code


async def _dead_letter_command(settings: config.Settings, command: str, ids: list[int], everything: bool) -> int:
    pool = await db.create_pool(settings.database_url, settings.schema, min_size=1, max_size=2)
    try:
        if command == "dead-letters":
            for letter in await dead_letters.pending(pool, include_redelivered=everything, limit=10_000):
                print(json.dumps(letter.as_dict(), ensure_ascii=False))
            return 0
        broker = await messaging.Broker.connect(settings.nats_url, name=f"{settings.service}-redeliver")
        refused = 0
        try:
            for dead_letter_id in ids:
                try:
                    letter = await dead_letters.redeliver(pool, broker, dead_letter_id,
                                                          inbox_retention=inbox_retention(settings.outbox_retention))
                except dead_letters.RedeliveryRefused as exc:
                    refused += 1
                    print(f"refused: {exc}", file=sys.stderr)
                    continue
                print(json.dumps(letter.as_dict(), ensure_ascii=False))
        finally:
            await broker.close()
        return 1 if refused else 0
    finally:
        await pool.close()


def main(service: str, build: Builder, argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m services.{service}")
    parser.add_argument("command", choices=["serve", "migrate", "dead-letters", "redeliver"], nargs="?",
                        default="serve", help="dead-letters lists the events its consumers gave up on (JSON "
                        "lines); redeliver ID... hands them back to their stream (services.common.dead_letters)")
    parser.add_argument("ids", nargs="*", type=int, help="redeliver: the dead letters' ids")
    parser.add_argument("--all", action="store_true", help="dead-letters: those already redelivered too")
    args = parser.parse_args(argv)
    settings = config.load(service)
    logs.configure(settings.log_level, service=service)
    if args.command == "migrate":
        applied = asyncio.run(db.migrate(settings.database_url, settings.schema, service))
        log.info("migrations done", applied=applied)
        return
    if args.command in ("dead-letters", "redeliver"):
        if args.command == "redeliver" and not args.ids:
            parser.error("redeliver needs the ids of the dead letters (see dead-letters)")
        sys.exit(asyncio.run(_dead_letter_command(settings, args.command, args.ids, args.all)))
    workers = worker_count(settings)
    worker = os.environ.get(WORKER_ENV)
    if workers > 1 and worker is None:
        sys.exit(supervise(settings, workers, ["serve"]))
    if worker is not None:
        _die_with_parent()
    try:
        run(ServiceApp(settings, build, reuse_port=workers > 1).run_until_signal())
    except KeyboardInterrupt:
        sys.exit(130)
