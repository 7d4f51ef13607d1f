"""Services run as real processes on fixed ports, for tests that kill and restart them.

A port is chosen once, so a process started again after a SIGKILL answers where its
clients already point: they see UNAVAILABLE, retry, and reach the new process.
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import random
import signal
import subprocess
from collections.abc import AsyncIterator

import grpc

from tests.support.stack import TestStack, free_port, wait_serving


class ServiceProcess:
    def __init__(self, stack: TestStack, service: str, *, module: str = "", args: tuple[str, ...] = ("serve",),
                 **env: str) -> None:
        self.stack = stack
        self.service = service
        self.module = module or f"services.{service}"
        self.args = args
        self.port = free_port()
        # Ports a service opens besides gRPC must not collide with the session's other services.
        self.env = {"GRPC_PORT": str(self.port), "RECEIPTS_PORT": str(free_port()), **env}
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self, timeout: float = 40.0, **env: str) -> "ServiceProcess":
        self.starts += 1
        self.proc = self.stack.spawn(self.module, self.service, *self.args, **{**self.env, **env})
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.service} exited with {self.proc.returncode} before serving "
                                   f"(log: {self.stack.log_dir / (self.service + '.log')})")
            try:
                await wait_serving(self.port, timeout=1.0)
                return self
            except TimeoutError:
                if asyncio.get_running_loop().time() > deadline:
                    raise

    def kill(self) -> int | None:
        """SIGKILL the whole process group: nothing gets to clean up, as in a crash."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(10)

    async def wait_exit(self, timeout: float) -> int | None:
        if self.proc is None:
            return None
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            return None


@contextlib.asynccontextmanager
async def started(*processes: ServiceProcess) -> AsyncIterator[tuple[ServiceProcess, ...]]:
    """Start the processes together; each is killed on the way out, whatever happened."""
    try:
        await asyncio.gather(*(p.start() for p in processes))
        yield processes
    finally:
        for p in processes:
            p.kill()


def channel(target: str) -> grpc.aio.Channel:
    """A client channel that finds a restarted server within a fraction of a second
    (gRPC's default reconnect backoff grows to minutes)."""
    return grpc.aio.insecure_channel(target, options=[
        ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 500)])


RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


async def call_retrying(method, request, *, metadata, attempt_timeout: float = 5.0, give_up_after: float = 90.0,
                        retries: list | None = None):
    """What a well-behaved client does: the same request (same request_id) again on
    UNAVAILABLE or DEADLINE_EXCEEDED, with jittered backoff, for a bounded time.
    Each retried failure is appended to `retries` when given."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_after
    attempt = 0
    while True:
        try:
            return await method(request, metadata=metadata, timeout=attempt_timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRYABLE or loop.time() > deadline:
                raise
            if retries is not None:
                retries.append(exc.code())
            attempt += 1
            await asyncio.sleep(min(1.0, 0.05 * 2 ** attempt) * random.uniform(0.5, 1.0))


async def until(predicate, timeout: float, interval: float = 0.2):
    """Poll a predicate (sync or async) until it returns something truthy; that value, or None at the timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value or asyncio.get_running_loop().time() > deadline:
            return value or None
        await asyncio.sleep(interval)


__all__ = ["RETRYABLE", "ServiceProcess", "call_retrying", "channel", "started", "until"]
