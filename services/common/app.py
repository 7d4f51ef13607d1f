"""How a service starts, runs and stops: one place for all three.

A service provides `build(ctx) -> ServiceParts` (its gRPC servicers, its event
subscriptions, its background jobs) and, optionally, `configure(settings)`: its own
settings parsed and checked (config.SettingsError naming every bad one). This module
owns the order of start and stop. Start: every setting checked before anything is
connected, then migrate (or check the schema is current), pool, broker, relay,
consumers, jobs, gRPC. Stop (SIGTERM), all within SHUTDOWN_GRACE_SECONDS: health to
NOT_SERVING; then at once gRPC lets in-flight calls finish, consumers finish the event in
hand and hand back the rest of their fetch, jobs that can stop gracefully finish the work
in hand; then the rest is cancelled and the connections closed.
While it runs, readiness follows PostgreSQL and liveness fails if a background task dies.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import grpc
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

# Readiness: NOT_SERVING after this many failed database checks in a row, SERVING again
# after as many good ones: one slow answer does not take a replica out of its Service.
HEALTH_FAILURES_TO_FLIP = 2
# Of the shutdown budget, what closing the connections keeps (the rest is for the work in hand).
SHUTDOWN_CLOSING_SECONDS = 5.0
# After SHUTDOWN_GRACE_SECONDS plus this, the process exits whatever is still running
# (_exit_if_overdue): each shutdown step gets at least 0.5 s even past the deadline.
# Kubernetes' terminationGracePeriodSeconds must cover it (tests/deploy checks).
SHUTDOWN_BACKSTOP_SECONDS = 3.0


def shutdown_work_seconds(grace: float) -> float:
    """Of a shutdown grace of `grace` seconds, what the work in hand (calls, events, graceful
    jobs) may use: a service's own settings check that their longest step fits it."""
    return max(0.5, grace - min(SHUTDOWN_CLOSING_SECONDS, grace / 4))


@dataclass
class AppContext:
    settings: config.Settings
    pool: asyncpg.Pool
    broker: messaging.Broker
    relay: OutboxRelay
    pii: PiiCipher


@dataclass(frozen=True)
class Job:
    """A background job that can end gracefully: at shutdown `stop()` asks it to finish the
    work in hand and return, which it is given the shutdown's budget to do."""
    run: Callable[[], Awaitable[None]]
    stop: Callable[[], None]


@dataclass
class ServiceParts:
    registrars: list[Registrar] = field(default_factory=list)
    subscriptions: list[Subscription] = field(default_factory=list)
    # Long-running coroutines (periodic jobs, servers) or Jobs. Each must run until the service
    # stops: one that ends early fails liveness. Cancelled at shutdown (a Job asked first).
    background: list[Callable[[], Awaitable[None]] | Job] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


Builder = Callable[[AppContext], ServiceParts]
# A service's own settings, parsed and checked without I/O: config.SettingsError if bad.
Configure = Callable[[config.Settings], object]


def verifier_for(settings: config.Settings) -> auth.TokenVerifier:
    keys = settings.auth_public_keys
    if not keys:
        if not settings.dev_mode:
            raise config.SettingsError(["AUTH_JWT_PUBLIC_KEYS must be set (DEV_MODE=1 generates a local key pair)"])
        log.warning("AUTH_JWT_PUBLIC_KEYS unset: using the development key pair")
        keys = auth.dev_keys(settings.data_dir).public_pem
    try:
        return auth.TokenVerifier(keys, issuer=settings.auth_issuer, audience=settings.auth_audience)
    except (ValueError, TypeError):
        raise config.SettingsError(["AUTH_JWT_PUBLIC_KEYS must hold PEM public keys (-----BEGIN PUBLIC KEY-----)"]) \
            from None


def connection_problems(settings: config.Settings, *, nats: bool = True) -> list[str]:
    needed = {"DATABASE_URL": settings.database_url, **({"NATS_URL": settings.nats_url} if nats else {})}
    return [f"{name} must be set (`make run` starts a local stack and sets it for every service)"
            for name, value in needed.items() if not value]


def grpc_options(settings: config.Settings, reuse_port: bool) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [("grpc.so_reuseport", 1 if reuse_port else 0),
                                      ("grpc.max_receive_message_length", 4 << 20)]
    if settings.grpc_max_connection_age_seconds > 0:
        # A clinic system keeps one HTTP/2 connection for days: without an age limit, replicas
        # added later (a scale-up, a rollout) would never get its calls.
        options += [("grpc.max_connection_age_ms", int(settings.grpc_max_connection_age_seconds * 1000)),
                    ("grpc.max_connection_age_grace_ms",
                     int(settings.grpc_max_connection_age_grace_seconds * 1000))]
    return options


@dataclass(frozen=True)
class Prepared:
    """What a start needs from the settings, built before anything is connected."""
    verifier: auth.TokenVerifier
    pii: PiiCipher
    credentials: grpc.ServerCredentials | None


def prepare(settings: config.Settings, configure: Configure | None = None,
            earlier: list[str] | tuple[str, ...] = ()) -> Prepared:
    """Every setting of a start checked, the shared runtime's and the service's own, all
    problems (with `earlier` ones, e.g. from config.read) in one config.SettingsError."""
    problems = [*earlier, *connection_problems(settings)]
    verifier = pii = credentials = None
    try:
        verifier = verifier_for(settings)
    except config.SettingsError as exc:
        problems += exc.problems
    try:
        pii = PiiCipher.from_config(settings.pii_encryption_keys, settings.pii_hash_key,
                                    settings.data_dir if settings.dev_mode else None)
    except config.SettingsError as exc:
        problems += exc.problems
    try:
        credentials = server_credentials(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    except OSError as exc:
        problems.append(f"TLS_CERT_FILE, TLS_KEY_FILE or TLS_CLIENT_CA_FILE cannot be read: {exc.strerror} "
                        f"({exc.filename})")
    if configure is not None:
        try:
            configure(settings)
        except config.SettingsError as exc:
            problems += exc.problems
    if problems:
        raise config.SettingsError(problems)
    assert verifier is not None and pii is not None
    return Prepared(verifier, pii, credentials)


class ServiceApp:
    def __init__(self, settings: config.Settings, build: Builder, *, configure: Configure | None = None,
                 reuse_port: bool = False) -> None:
        self.settings = settings
        self._build = build
        self._configure = configure
        # Several worker processes serving one port (SO_REUSEPORT): see `main`.
        self._reuse_port = reuse_port
        self._prepared: Prepared | None = None
        self.ctx: AppContext | None = None
        self.grpc: GrpcServer | None = None
        self._consumers: list[EventConsumer] = []
        self._tasks: list[asyncio.Task] = []
        # Background tasks whose Job can stop gracefully: task -> its stop.
        self._graceful: dict[asyncio.Task, Callable[[], None]] = {}
        self._parts = ServiceParts()
        self._metrics = None
        self._stopping = False
        self._started = False
        self._broken = False
        self._health_updates: set[asyncio.Task] = set()

    @property
    def port(self) -> int:
        assert self.grpc is not None
        return self.grpc.port

    def prepare(self, earlier: list[str] | tuple[str, ...] = ()) -> Prepared:
        if self._prepared is None:
            self._prepared = prepare(self.settings, self._configure, earlier)
        return self._prepared

    async def start(self) -> None:
        s = self.settings
        ready = self.prepare()
        await _migrate_or_check(s)
        pool = await db.create_pool(s.database_url, s.schema, min_size=s.db_pool_min,
                                    max_size=s.db_pool_max, command_timeout=s.db_command_timeout,
                                    acquire_timeout=s.db_acquire_timeout)
        broker = await messaging.Broker.connect(s.nats_url, name=s.service,
                                                stream_replicas=s.nats_stream_replicas)
        await broker.ensure_stream(s.service, s.nats_stream_replicas)
        relay = OutboxRelay(pool, broker, s.schema, dsn=s.database_url, poll_seconds=s.outbox_poll_seconds,
                            retention=s.outbox_retention)
        self.ctx = AppContext(s, pool, broker, relay, ready.pii)
        self._parts = self._build(self.ctx)
        self._watch(relay.start(), "outbox relay")
        for subscription in self._parts.subscriptions:
            consumer = EventConsumer(broker, pool, subscription, max_deliver=s.consumer_max_deliver)
            self._watch(consumer.start(), f"consumer {subscription.durable}")
            self._consumers.append(consumer)
        inbox_purge = periodic("inbox purged", s.inbox_purge_seconds, lambda: purge_inbox(
            pool, inbox_retention(s.outbox_retention)))
        for job in (*self._parts.background, inbox_purge):
            run = job.run if isinstance(job, Job) else job
            task = self._watch(asyncio.create_task(run()), getattr(run, "__qualname__", repr(run)))
            self._tasks.append(task)
            if isinstance(job, Job):
                self._graceful[task] = job.stop
        self.grpc = GrpcServer(s.grpc_port, self._parts.registrars, verifier=ready.verifier,
                               credentials=ready.credentials, options=grpc_options(s, self._reuse_port))
        await self.grpc.start()
        self._started = True
        if self._broken:  # a task died while the rest was starting
            self._health(self.grpc.set_broken())
        self._tasks.append(asyncio.create_task(self._watch_database(), name="database health"))
        if s.metrics_port:
            self._metrics = _start_metrics(s.metrics_port)
        log.info("service started", grpc_port=self.grpc.port, metrics_port=s.metrics_port)

    def _watch(self, task: asyncio.Task, what: str) -> asyncio.Task:
        """A task that must run as long as the service: its end, before shutdown, fails liveness."""
        task.add_done_callback(lambda t: self._task_ended(t, what))
        return task

    def _task_ended(self, task: asyncio.Task, what: str) -> None:
        error = None if task.cancelled() else task.exception()
        if self._stopping:
            return
        # Such a task catches its own errors; ending means a bug or a resource it cannot get
        # (e.g. a port): the process is broken while its calls may still succeed, and only a
        # restart mends it. Liveness asks for "" and restarts the pod.
        log.error("background task ended, service marked not live", task=what,
                  error=repr(error) if error is not None else ("cancelled" if task.cancelled() else "returned"))
        self._broken = True
        if self._started and self.grpc is not None:
            self._health(self.grpc.set_broken())

    def _health(self, update: Awaitable[None]) -> None:
        task = asyncio.ensure_future(update)
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    async def _watch_database(self) -> None:
        """Readiness follows PostgreSQL, on a connection of its own (a busy pool is not an
        outage). NATS is left out: while the broker is away the outbox keeps the events and
        calls still succeed."""
        assert self.grpc is not None
        s = self.settings
        timeout = min(2.0, s.health_check_seconds)
        conn: asyncpg.Connection | None = None
        ready, streak = True, 0
        try:
            while True:
                await asyncio.sleep(s.health_check_seconds)
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncpg.connect(s.database_url, timeout=timeout,
                                                     server_settings={"application_name": f"{s.schema}-health"})
                    ok = await db.answers(conn, timeout)
                except Exception:  # noqa: BLE001 - whatever the reason, it does not answer
                    ok = False
                if not ok and conn is not None:
                    conn.terminate()
                    conn = None
                streak = streak + 1 if ok != ready else 0
                if streak >= HEALTH_FAILURES_TO_FLIP:
                    ready, streak = ok, 0
                    await self.grpc.set_ready(ready)
                    if ready:
                        log.info("database answers again: ready")
                    else:
                        log.warning("database does not answer: not ready", checks=HEALTH_FAILURES_TO_FLIP)
        finally:
            if conn is not None:
                conn.terminate()

    async def stop(self) -> None:
        """Stops everything, aiming to be done SHUTDOWN_GRACE_SECONDS after the call: the work
        in hand gets shutdown_work_seconds(grace), closing the connections the rest.
        Each step after the deadline still gets at least 0.5 s, so the process may take up
        to grace + SHUTDOWN_BACKSTOP_SECONDS (3 s), when run_until_signal's backstop exits it."""
        loop = asyncio.get_running_loop()
        grace = self.settings.shutdown_grace_seconds
        deadline = loop.time() + grace
        work = shutdown_work_seconds(grace)
        self._stopping = True
        log.info("service stopping", grace_seconds=grace)
        if self.grpc is not None:
            await self.grpc.enter_shutdown()
        for stop_job in self._graceful.values():
            stop_job()
        # Together: a slow event (a solve) must not hold up the end of the calls, nor they it.
        await asyncio.gather(
            *([self.grpc.stop(work)] if self.grpc is not None else []),
            *(c.stop(work) for c in self._consumers),
            *([asyncio.wait(set(self._graceful), timeout=work)] if self._graceful else []),
            return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await self._until(deadline, "background tasks", asyncio.gather(*self._tasks, return_exceptions=True))
        for hook in self._parts.on_stop:
            await self._until(deadline, getattr(hook, "__qualname__", "on_stop"), hook())
        if self.ctx is not None:
            await self._until(deadline, "outbox relay", self.ctx.relay.stop())
            await self._until(deadline, "broker", self.ctx.broker.close())
            if not await self._until(deadline, "database pool", self.ctx.pool.close()):
                self.ctx.pool.terminate()
        if self._metrics is not None:
            await asyncio.to_thread(self._metrics.shutdown)  # waits out its poll (0.5 s)
            self._metrics.server_close()
        log.info("service stopped", seconds=round(grace - (deadline - loop.time()), 1))

    @staticmethod
    async def _until(deadline: float, what: str, step: Awaitable[Any]) -> bool:
        """One shutdown step, cut off at the deadline (or after half a second if already past)."""
        left = max(0.5, deadline - asyncio.get_running_loop().time())
        try:
            await asyncio.wait_for(step, left)
            return True
        except asyncio.TimeoutError:
            log.warning("shutdown step cut off at the deadline", step=what)
        except Exception as exc:  # noqa: BLE001 - the next steps still run
            log.warning("shutdown step failed", step=what, error=repr(exc))
        return False

    async def run_until_signal(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        _exit_if_overdue(self.settings.shutdown_grace_seconds + SHUTDOWN_BACKSTOP_SECONDS)
        await self.stop()


async def _migrate_or_check(settings: config.Settings) -> None:
    if settings.migrate_on_start:
        await db.migrate(settings.database_url, settings.schema, settings.service)
    else:
        await db.require_current(settings.database_url, settings.schema, settings.service)


def _start_metrics(port: int):
    """Both address families where the host has IPv6 (a dual-stack cluster scrapes either)."""
    try:
        server, _ = start_http_server(port, addr="::")
    except OSError:
        server, _ = start_http_server(port, addr="0.0.0.0")
    return server


def _exit_if_overdue(seconds: float) -> None:
    """The last resort of the shutdown deadline: a thread `stop` cannot cancel (a solve) or a
    join at interpreter exit must not keep the process until Kubernetes' SIGKILL."""
    def overdue() -> None:
        sys.stderr.write(f"shutdown still not done after {seconds:g} s: exiting\n")
        sys.stderr.flush()
        os._exit(1)
    timer = threading.Timer(seconds, overdue)
    timer.daemon = True
    timer.start()


WORKER_ENV = "SERVICE_WORKER_INDEX"


def run(main: Coroutine[Any, Any, T], event_loop: str | None = None) -> T:
    """Run a process's main coroutine on the event loop EVENT_LOOP names: uvloop (the
    default; libuv's loop takes about a third less CPU per call than asyncio's on the
    create path, see `make bench`) or asyncio (the standard library's, to rule uvloop out)."""
    if event_loop is None:
        reader = config.Reader()
        event_loop = reader.choice("EVENT_LOOP", "uvloop", config.EVENT_LOOPS)
        if reader.problems:
            raise SystemExit(config.SettingsError(reader.problems).report("process"))
    if event_loop == "uvloop":
        return uvloop.run(main)
    return asyncio.run(main)


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
    asyncio.run(_migrate_or_check(settings))
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


def main(service: str, build: Builder, argv: list[str] | None = None, *, configure: Configure | None = None) -> None:
    """`python -m services.<service> [command]`. Bad settings, or a schema it cannot use,
    end it with one message on stderr and exit status 1, before it connects to anything."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{service}")
    parser.add_argument("command", choices=["serve", "migrate", "dead-letters", "redeliver"], nargs="?",
                        default="serve", help="dead-letters lists the events its consumers gave up on (JSON "
                        "lines); redeliver ID... hands them back to their stream (services.common.dead_letters)")
    parser.add_argument("ids", nargs="*", type=int, help="redeliver: the dead letters' ids")
    parser.add_argument("--all", action="store_true", help="dead-letters: those already redelivered too")
    args = parser.parse_args(argv)
    if args.command == "redeliver" and not args.ids:
        parser.error("redeliver needs the ids of the dead letters (see dead-letters)")
    settings, problems = config.read(service)
    logs.configure(settings.log_level, service=service)
    try:
        if args.command == "serve":
            sys.exit(_serve(settings, build, configure, problems))
        problems += connection_problems(settings, nats=args.command == "redeliver")
        if problems:
            raise config.SettingsError(problems)
        if args.command == "migrate":
            applied = asyncio.run(db.migrate(settings.database_url, settings.schema, service))
            log.info("migrations done", applied=applied)
            return
        sys.exit(asyncio.run(_dead_letter_command(settings, args.command, args.ids, args.all)))
    except config.SettingsError as exc:
        sys.exit(exc.report(service))
    except db.MigrationError as exc:
        sys.exit(f"{service}: not started: {exc}")


def _serve(settings: config.Settings, build: Builder, configure: Configure | None, problems: list[str]) -> int:
    workers = settings.workers
    service_app = ServiceApp(settings, build, configure=configure, reuse_port=workers > 1)
    service_app.prepare(problems)
    worker = os.environ.get(WORKER_ENV)
    if workers > 1 and worker is None:
        return supervise(settings, workers, ["serve"])
    if worker is not None:
        _die_with_parent()
    try:
        run(service_app.run_until_signal(), settings.event_loop)
    except KeyboardInterrupt:
        return 130
    return 0
