"""A running service: how it stops (the work in hand finishes, the rest goes back, nothing
waits on anything else) and what its health says (readiness follows PostgreSQL, liveness
a dead background task), and gRPC's connection age."""
import asyncio
import contextlib
import uuid

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.v1 import types_pb2
from services.common import app, messaging
from services.common.auth import Role
from services.common.consumer import EventConsumer, Subscription
from tests.integration.notify.notify_support import Patient, Referral, fakes, notify_service, publish, vendor_env
from tests.support.processes import until
from tests.support.slow_service import SERVICE, register
from tests.support.slow_service import build as slow_build
from tests.support.stack import running_service

from .conftest import TEST_STREAM

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def _publish_dates(broker, hospital: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        env = messaging.envelope(types_pb2.Date(year=2026, month=1, day=i + 1), aggregate_id=f"a{i}",
                                 hospital_id=hospital)
        await broker.js.publish(f"common.v1.Date.{hospital}", env.SerializeToString(),
                                headers={"Nats-Msg-Id": env.event_id})
        ids.append(env.event_id)
    return ids


def _slow_subscription(hospital: str, seconds: float, applied: list[str], started: asyncio.Event) -> Subscription:
    async def slow(conn, env, payload):
        started.set()
        await asyncio.sleep(seconds)  # e.g. a CP-SAT solve
        applied.append(env.event_id)

    return Subscription(durable=f"slow_{hospital}", stream=TEST_STREAM,
                        filter_subjects=[f"common.v1.Date.{hospital}"]).on(types_pb2.Date, slow)


async def _health(port: int, name: str):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
        return reply.status


# ---------------------------------------------------------------- stopping


async def test_a_stopping_consumer_hands_back_the_rest_of_its_fetch(pool, broker):
    hospital = f"H{uuid.uuid4().hex[:6]}"
    applied: list[str] = []
    started = asyncio.Event()
    sub = _slow_subscription(hospital, 0.5, applied, started)
    ids = await _publish_dates(broker, hospital, 10)
    first = EventConsumer(broker, pool, sub, fetch_timeout=0.5)
    first.start()
    await asyncio.wait_for(started.wait(), 10)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await first.stop()
    took = loop.time() - began
    # The event in hand, not the ten of the fetch (five seconds).
    assert took < 1.5, took
    assert 1 <= len(applied) <= 2
    # The rest was handed back: the next consumer gets it at once, not after ack_wait (30 s).
    second = EventConsumer(broker, pool, sub, fetch_timeout=0.5)
    second.start()
    try:
        assert await until(lambda: len(applied) >= 10, 10), applied
        await asyncio.sleep(1.0)
    finally:
        await second.stop()
    assert sorted(applied) == sorted(ids)  # each once


async def test_grpc_stops_at_once_while_a_consumer_is_in_a_slow_event(stack, broker):
    hospital = f"H{uuid.uuid4().hex[:6]}"
    applied: list[str] = []
    started = asyncio.Event()
    sub = _slow_subscription(hospital, 3.0, applied, started)
    svc = app.ServiceApp(stack.settings("referral", shutdown_grace_seconds=10.0),
                         lambda ctx: app.ServiceParts(registrars=[register], subscriptions=[sub]))
    await svc.start()
    stopped = False
    try:
        await _publish_dates(broker, hospital, 3)
        await asyncio.wait_for(started.wait(), 10)
        loop = asyncio.get_running_loop()
        grpc_stop_called: list[float] = []
        grpc_stop = svc.grpc.stop

        async def recorded_stop(grace: float) -> None:
            grpc_stop_called.append(loop.time())
            await grpc_stop(grace)

        svc.grpc.stop = recorded_stop
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
            call = asyncio.ensure_future(channel.unary_unary(f"/{SERVICE}/Sleep")(
                b"1000", metadata=stack.metadata("CLINIC01", Role.CLINIC_DOCTOR)))
            await asyncio.sleep(0.2)
            began = loop.time()
            await svc.stop()
            stopped = True
            took = loop.time() - began
            assert await call == b"done"  # the call in flight finished
        assert grpc_stop_called and grpc_stop_called[0] - began < 0.5
        # The event in hand finished; the other two wait for the next replica rather than holding
        # the stop 6 s more.
        assert len(applied) == 1 and took < 4.0, (applied, took)
    finally:
        if not stopped:
            await svc.stop()


async def test_the_dispatcher_lets_a_send_in_flight_finish(stack, monkeypatch):
    await stack.reset_streams()
    vendors = fakes()
    for fake in vendors:
        await fake.start()
    _, aliyun, _ = vendors
    aliyun.answer_late()  # the vendor takes the message and answers after stall_seconds
    broker = await messaging.Broker.connect(stack.nats_url, name="lifecycle-test")
    db = await asyncpg.connect(stack.database_url)
    ref = Referral(Patient(stack))
    try:
        await broker.ensure_streams()
        loop = asyncio.get_running_loop()
        async with notify_service(stack, monkeypatch, vendor_env(*vendors)):
            await publish(broker, ref.accepted(), ref)
            assert await until(lambda: aliyun.accepted, 15, interval=0.05), "the vendor never got the message"
            began = loop.time()
        # Stopped while the vendor was answering: the answer was waited for and recorded,
        # not cut off (the delivery would sit SENDING until its lease ran out, then go again).
        assert loop.time() - began >= aliyun.stall_seconds * 0.8
        row = await db.fetchrow("SELECT d.status, d.attempts FROM notify.deliveries d JOIN notify.notifications n "
                                "ON n.id = d.notification_id WHERE n.referral_id = $1", ref.referral_id)
        assert (row["status"], row["attempts"]) == ("SENT", 1)
    finally:
        await db.close()
        await broker.close()
        for fake in vendors:
            await fake.stop()


# ---------------------------------------------------------------- health


class _Proxy:
    """A TCP proxy to PostgreSQL that can be cut and restored: an outage of one service's
    database without stopping the session's server."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pump(src, dst) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def cut(self) -> None:
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()


async def test_readiness_follows_the_database_and_liveness_does_not(stack):
    proxy = _Proxy(stack.stack.postgres.port)
    await proxy.start()
    url = stack.database_url.replace(f":{stack.stack.postgres.port}/", f":{proxy.port}/")
    try:
        async with running_service(stack, "referral", slow_build, database_url=url, health_check_seconds=0.2) as svc:
            assert await _health(svc.port, SERVICE) == SERVING
            await proxy.cut()
            assert await until(lambda: _is(svc.port, SERVICE, NOT_SERVING), 5)
            assert await _health(svc.port, "") == SERVING  # a database outage is no reason to restart
            await proxy.start()
            assert await until(lambda: _is(svc.port, SERVICE, SERVING), 5)
    finally:
        await proxy.cut()


async def _is(port: int, name: str, status) -> bool:
    return await _health(port, name) == status


async def test_a_dead_background_task_fails_liveness(stack, log_dir):
    async def receipts_server_that_cannot_bind() -> None:
        await asyncio.sleep(0.3)
        raise OSError(98, "address already in use")

    def build(ctx) -> app.ServiceParts:
        return app.ServiceParts(registrars=[register], background=[receipts_server_that_cannot_bind])

    async with running_service(stack, "referral", build) as svc:
        assert await until(lambda: _is(svc.port, "", NOT_SERVING), 5)
        assert await _health(svc.port, SERVICE) == SERVING  # the calls themselves still work
    logged = (log_dir / "pytest.log").read_text(encoding="utf-8")
    assert "receipts_server_that_cannot_bind" in logged and "background task ended" in logged


# ---------------------------------------------------------------- connection age


async def test_connections_are_closed_at_their_max_age(stack):
    async with running_service(stack, "referral", slow_build, grpc_max_connection_age_seconds=1.0,
                               grpc_max_connection_age_grace_seconds=1.0) as svc:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                # Longer than age (1 s, jittered by 10%) and grace (1 s): the server ends the connection.
                await channel.unary_unary(f"/{SERVICE}/Sleep")(
                    b"6000", metadata=stack.metadata("CLINIC01", Role.CLINIC_DOCTOR), timeout=10)
            assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
