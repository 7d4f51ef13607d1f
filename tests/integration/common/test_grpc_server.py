"""The gRPC bootstrap: health, reflection, metrics, rich errors, auth, graceful stop."""
import asyncio
import signal
import urllib.request

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common import app, errors
from services.common.auth import Role
from services.common.localstack import free_port
from tests.support.rpc_errors import field_violations, reason
from tests.support.slow_service import SERVICE, register
from tests.support.stack import running_service, wait_serving

FAILING = "test.v1.Failing"


async def _invalid(request: bytes, context) -> bytes:
    v = errors.Violations()
    v.add("referral.patient.id_number", "身份证号校验位错误")
    v.add("referral.patient.mobile", "not a mainland mobile number")
    v.raise_if_any()


async def _boom(request: bytes, context) -> bytes:
    raise ZeroDivisionError("a bug")


async def _deadlock(request: bytes, context) -> bytes:
    raise asyncpg.exceptions.DeadlockDetectedError("deadlock detected")


async def _precondition(request: bytes, context) -> bytes:
    raise errors.FailedPrecondition("referral is COMPLETED; cannot accept", reason="ILLEGAL_TRANSITION")


def _register_failing(server):
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(FAILING, {
        "Invalid": grpc.unary_unary_rpc_method_handler(_invalid),
        "Boom": grpc.unary_unary_rpc_method_handler(_boom),
        "Precondition": grpc.unary_unary_rpc_method_handler(_precondition),
        "Deadlock": grpc.unary_unary_rpc_method_handler(_deadlock),
    }),))
    return [FAILING]


def _build(ctx):
    return app.ServiceParts(registrars=[register, _register_failing])


def _build_busy(ctx):
    async def busy(request: bytes, context) -> bytes:
        # Holds the pool's only connection and asks for another: the pool is exhausted.
        async with ctx.pool.acquire(), ctx.pool.acquire():
            return b""

    def register_busy(server):
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(FAILING, {
            "Busy": grpc.unary_unary_rpc_method_handler(busy)}),))
        return [FAILING]
    return app.ServiceParts(registrars=[register_busy])


@pytest.fixture
async def service(stack):
    metrics_port = free_port()
    async with running_service(stack, "referral", _build, metrics_port=metrics_port) as svc:
        svc.metrics_port = metrics_port
        yield svc


def _call(channel, service, method):
    return channel.unary_unary(f"/{service}/{method}")


async def test_health_and_reflection(service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = set()
        async for response in responses:
            names |= {s.name for s in response.list_services_response.service}
        assert {"grpc.health.v1.Health", SERVICE, FAILING} <= names


async def test_calls_need_a_valid_token(stack, service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as no_token:
            await _call(channel, SERVICE, "Sleep")(b"0")
        assert no_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as garbage:
            await _call(channel, SERVICE, "Sleep")(b"0", metadata=(("authorization", "Bearer abc.def.ghi"),))
        assert garbage.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = await _call(channel, SERVICE, "Sleep")(b"0", metadata=stack.metadata("CLINIC01", Role.CLINIC_DOCTOR))
        assert reply == b"done"


async def test_domain_errors_carry_rich_details(stack, service):
    md = stack.metadata("HOSP01", Role.REFERRAL_DESK)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await _call(channel, FAILING, "Invalid")(b"", metadata=md)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in field_violations(invalid.value)] == ["referral.patient.id_number",
                                                                    "referral.patient.mobile"]

        with pytest.raises(grpc.aio.AioRpcError) as pre:
            await _call(channel, FAILING, "Precondition")(b"", metadata=md)
        assert pre.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "COMPLETED" in pre.value.details()

        # PostgreSQL rolled the call back to break a deadlock: retry it, not a bug report.
        with pytest.raises(grpc.aio.AioRpcError) as deadlock:
            await _call(channel, FAILING, "Deadlock")(b"", metadata=md)
        assert deadlock.value.code() == grpc.StatusCode.ABORTED

        with pytest.raises(grpc.aio.AioRpcError) as boom:
            await _call(channel, FAILING, "Boom")(b"", metadata=md)
        assert boom.value.code() == grpc.StatusCode.INTERNAL
        assert "a bug" not in boom.value.details()  # internals are logged, not returned


async def test_an_exhausted_pool_answers_unavailable_within_the_acquire_timeout(stack):
    async with running_service(stack, "referral", _build_busy, db_pool_min=1, db_pool_max=1,
                               db_acquire_timeout=0.3) as svc:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as busy:
                # A deadline far beyond the acquire timeout: the pool must give up first.
                await _call(channel, FAILING, "Busy")(b"", metadata=stack.metadata("HOSP01", Role.REFERRAL_DESK),
                                                      timeout=30)
        assert busy.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reason(busy.value) == "BACKEND_UNAVAILABLE"
        # An explicit timeout still wins over the pool's default.
        async with svc.ctx.pool.acquire():
            with pytest.raises(TimeoutError):
                await svc.ctx.pool.acquire(timeout=0.05)


async def test_metrics_are_named_as_go_grpc_prometheus(stack, service):
    md = stack.metadata("HOSP01", Role.REFERRAL_DESK)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        await _call(channel, SERVICE, "Sleep")(b"1", metadata=md)
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=5).read().decode())
    assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="Sleep",grpc_service="test.v1.Slow",grpc_type="unary"}' in body
    assert "grpc_server_handling_seconds_bucket" in body


async def test_sigterm_lets_in_flight_calls_finish(stack):
    port = free_port()
    proc = stack.spawn("tests.support.slow_service", "slow-service", GRPC_PORT=str(port),
                       SHUTDOWN_GRACE_SECONDS="10")
    try:
        await wait_serving(port)
        md = stack.metadata("CLINIC01", Role.CLINIC_DOCTOR)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            calls = [asyncio.ensure_future(_call(channel, SERVICE, "Sleep")(b"2500", metadata=md)) for _ in range(5)]
            await asyncio.sleep(0.8)  # the calls are in flight
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            health = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                not_serving = reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            except grpc.aio.AioRpcError:
                not_serving = True  # already refusing new calls: also not serving
            results = await asyncio.gather(*calls, return_exceptions=True)
        finished = sum(1 for r in results if r == b"done")
        print(f"SIGTERM with 5 calls in flight: finished = {finished}/5")
        assert finished == 5, results
        assert not_serving
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
