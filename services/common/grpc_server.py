"""The grpc.aio server every service runs: health, reflection, metrics, errors, auth.

One interceptor does the edge work of each call: request id, caller, log line,
Prometheus metrics named as go-grpc-prometheus names them, and the mapping of domain
errors to a status with rich details. Servicers stay free of all of it.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import asyncpg
import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram

from services.common import auth, db
from services.common.errors import (Aborted, DomainError, FieldViolation, InvalidArgument, Unauthenticated,
                                    Unavailable, to_rpc_status)
from services.common.logging import get_logger

log = get_logger("grpc")
# The per-call DEBUG line is off in production; asking the stdlib logger first skips building
# a bound logger on every call just to drop the line.
_debug = logging.getLogger("grpc").isEnabledFor

_LABELS = ("grpc_type", "grpc_service", "grpc_method")
STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", _LABELS)
HANDLED = Counter("grpc_server_handled_total", "RPCs completed on the server, regardless of success or failure.",
                  (*_LABELS, "grpc_code"))
HANDLING = Histogram("grpc_server_handling_seconds",
                     "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
                     _LABELS, buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
MSG_SENT = Counter("grpc_server_msg_sent_total", "gRPC stream messages sent by the server.", _LABELS)

# Methods anyone may call without a token: probes and tooling.
PUBLIC_SERVICES = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                             "grpc.reflection.v1.ServerReflection"})


_CHILDREN: dict[tuple, Any] = {}


def _child(metric: Any, labels: tuple) -> Any:
    """`metric.labels(*labels)`, looked up once (labels() takes a lock and builds a key)."""
    key = (id(metric), labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


def _grpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def _as_domain_error(exc: BaseException) -> DomainError | None:
    if isinstance(exc, DomainError):
        return exc
    if isinstance(exc, (asyncpg.exceptions.CharacterNotInRepertoireError,
                        asyncpg.exceptions.UntranslatableCharacterError)):
        # e.g. a NUL in a string field: PostgreSQL text cannot hold it; the caller must not send it.
        return InvalidArgument(FieldViolation("request", "包含无法保存的字符（如NUL）"))
    if isinstance(exc, db.UNAVAILABLE_ERRORS):
        return Unavailable("后台服务暂不可用，请稍后重试", reason="BACKEND_UNAVAILABLE")
    if isinstance(exc, asyncpg.exceptions.TransactionRollbackError):
        # A deadlock or serialization failure PostgreSQL resolved by rolling this call back:
        # nothing was written, and the same call again is expected to succeed.
        return Aborted("并发操作冲突，未做任何修改，请重试", reason="CONCURRENT_MODIFICATION")
    return None


class EdgeInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, verifier: auth.TokenVerifier | None) -> None:
        self._verifier = verifier
        # method -> (the servicer's handler, our wrapped handler): the registered handlers never
        # change while the server runs, so each method is wrapped once, not on every call.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        known = self._wrapped.get(details.method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler, details.method)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, full_method: str) -> grpc.RpcMethodHandler:
        service, method = _split(full_method)
        labels = (_grpc_type(handler), service, method)
        needs_auth = service not in PUBLIC_SERVICES and self._verifier is not None
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, labels, needs_auth),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, labels, needs_auth),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler  # client or bidi streaming: none of our APIs use them

    def _begin(self, context: grpc.aio.ServicerContext, labels: tuple, needs_auth: bool) -> tuple:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        request_id = metadata.get("x-request-id") or uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id, rpc=f"{labels[1]}/{labels[2]}")
        _child(STARTED, labels).inc()
        caller = None
        if needs_auth:
            caller = self._verifier.verify_metadata(metadata)  # type: ignore[union-attr]
            structlog.contextvars.bind_contextvars(institution=caller.institution_id, role=caller.role.value)
        return request_id, auth.set_caller(caller)

    async def _finish(self, context, labels, started: float, exc: BaseException | None) -> None:
        code = grpc.StatusCode.OK
        if exc is not None:
            error = _as_domain_error(exc)
            if error is None:
                log.exception("unhandled error", exc_info=exc)
                code = grpc.StatusCode.INTERNAL
                _child(HANDLED, (*labels, code.name)).inc()
                _child(HANDLING, labels).observe(time.perf_counter() - started)
                await context.abort(code, "internal error")
            code = error.code
            _child(HANDLED, (*labels, code.name)).inc()
            _child(HANDLING, labels).observe(time.perf_counter() - started)
            log.info("rpc failed", code=code.name, error=error.message)
            status = to_rpc_status(error)
            await context.abort(code, error.message, trailing_metadata=(
                ("grpc-status-details-bin", status.SerializeToString()),))
        _child(HANDLED, (*labels, code.name)).inc()
        _child(HANDLING, labels).observe(time.perf_counter() - started)
        if _debug(logging.DEBUG):
            log.debug("rpc ok", seconds=round(time.perf_counter() - started, 4))

    def _wrap_unary(self, behavior, labels, needs_auth):
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            token = None
            try:
                _, token = self._begin(context, labels, needs_auth)
                response = await behavior(request, context)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AbortError:
                raise
            except BaseException as exc:  # noqa: BLE001 - the edge maps everything
                await self._finish(context, labels, started, exc)
                raise
            finally:
                if token is not None:
                    auth.reset_caller(token)
            await self._finish(context, labels, started, None)
            return response
        return wrapper

    def _wrap_stream(self, behavior, labels, needs_auth):
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            token = None
            try:
                _, token = self._begin(context, labels, needs_auth)
                async for item in behavior(request, context):
                    _child(MSG_SENT, labels).inc()
                    yield item
            except asyncio.CancelledError:
                _child(HANDLED, (*labels, grpc.StatusCode.CANCELLED.name)).inc()
                raise
            except grpc.aio.AbortError:
                raise
            except BaseException as exc:  # noqa: BLE001
                await self._finish(context, labels, started, exc)
                raise
            finally:
                if token is not None:
                    auth.reset_caller(token)
            await self._finish(context, labels, started, None)
        return wrapper


Registrar = Callable[[grpc.aio.Server], Iterable[str]]


def server_credentials(cert_file: str, key_file: str, client_ca_file: str = "") -> grpc.ServerCredentials | None:
    """TLS when a certificate is configured; mutual TLS when a client CA is too."""
    if not cert_file:
        return None
    with open(cert_file, "rb") as cert, open(key_file, "rb") as key:
        pair = (key.read(), cert.read())
    root = None
    if client_ca_file:
        with open(client_ca_file, "rb") as ca:
            root = ca.read()
    return grpc.ssl_server_credentials([pair], root_certificates=root, require_client_auth=root is not None)


class GrpcServer:
    """A grpc.aio server with health and reflection, stopped gracefully."""

    def __init__(self, port: int, registrars: list[Registrar], *, verifier: auth.TokenVerifier | None,
                 host: str = "[::]", options: list[tuple[str, Any]] | None = None,
                 credentials: grpc.ServerCredentials | None = None) -> None:
        self.server = grpc.aio.server(
            interceptors=[EdgeInterceptor(verifier)],
            options=options or [("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 4 << 20)])
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names: list[str] = []
        for register in registrars:
            self.service_names.extend(register(self.server))
        reflection.enable_server_reflection(
            [*self.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME], self.server)
        address = f"{host}:{port}"
        self.port = (self.server.add_secure_port(address, credentials) if credentials is not None
                     else self.server.add_insecure_port(address))
        if self.port == 0:
            raise RuntimeError(f"could not bind gRPC port {port}")

    async def start(self) -> None:
        await self.server.start()
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def set_ready(self, ready: bool) -> None:
        """Readiness (the probe asks for the service's own name): whether calls can succeed."""
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self.service_names:
            await self.health.set(name, status)

    async def set_broken(self) -> None:
        """Liveness (the probe asks for ""): NOT_SERVING has the pod restarted."""
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)

    async def enter_shutdown(self) -> None:
        """NOT_SERVING first, so load balancers stop sending before we stop accepting."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)
