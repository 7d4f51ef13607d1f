"""Fake vendor servers on loopback for the notify channel tests.

Each fake re-implements the vendor's checks from the vendor's documentation and
never imports the client code, so a client bug cannot hide behind a shared helper.
This module holds what the fakes share: the server lifecycle, scripted failures,
per-recipient rate windows and pushing receipts to a callback URL.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

# Scripted pseudo-codes understood by every fake, next to the vendor's own codes.
HTTP_503 = "HTTP_503"
STALL = "STALL"  # answer only after ``stall_seconds``: lets a client hit its read timeout


@dataclass
class _Scripted:
    code: str
    remaining: int
    message: str
    action: str | None = None  # None: any request


class RateWindows:
    """Sliding windows per recipient: (seconds, max sends, code to answer)."""

    def __init__(self, windows: list[tuple[float, int, str]]) -> None:
        self.windows = sorted(windows)
        self._hits: dict[str, deque[float]] = defaultdict(deque)

    def check(self, key: str, now: float) -> str | None:
        """Return the limit code if ``key`` may not send now, else record the send."""
        hits = self._hits[key]
        longest = self.windows[-1][0] if self.windows else 0
        while hits and now - hits[0] >= longest:
            hits.popleft()
        for seconds, limit, code in self.windows:
            if sum(1 for t in hits if now - t < seconds) >= limit:
                return code
        hits.append(now)
        return None


class FakeVendorServer:
    """Lifecycle and scripting shared by the fakes; subclasses add routes."""

    def __init__(self, *, clock: Callable[[], float] = time.time, stall_seconds: float = 2.0) -> None:
        self.clock = clock
        self.stall_seconds = stall_seconds
        self.accepted: list[dict[str, Any]] = []
        self.rejected: list[tuple[str, str]] = []  # (code, message) in arrival order
        self.request_count = 0
        self._script: deque[_Scripted] = deque()
        self._late = 0
        self._dropped = 0
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # -- lifecycle -------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    async def start(self) -> FakeVendorServer:
        app = web.Application(middlewares=[self._count, self._late_answers])
        app.add_routes(self.routes())
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # ephemeral port chosen by the OS
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeVendorServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @web.middleware
    async def _count(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        self.request_count += 1
        return await handler(request)

    @web.middleware
    async def _late_answers(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        taken = len(self.accepted)
        response = await handler(request)
        if len(self.accepted) > taken and self._dropped:
            self._dropped -= 1
            if request.transport is not None:
                request.transport.close()
        elif len(self.accepted) > taken and self._late:
            self._late -= 1
            await asyncio.sleep(self.stall_seconds)
        return response

    # -- scripting -------------------------------------------------------------

    def fail_next(self, code: str | int, times: int = 1, message: str = "scripted failure",
                  action: str | None = None) -> None:
        """The next ``times`` otherwise valid requests (of ``action`` only, if given) fail with ``code``."""
        self._script.append(_Scripted(str(code), times, message, action))

    def answer_late(self, times: int = 1) -> None:
        """The next ``times`` messages the fake takes are answered only after ``stall_seconds``:
        the client gives up on a message the vendor did take, and will report by receipt."""
        self._late += times

    def drop_answer(self, times: int = 1) -> None:
        """The next ``times`` messages the fake takes get no answer at all: the connection
        closes once the message is recorded, as when the way back fails."""
        self._dropped += times

    def take_scripted(self, action: str | None = None) -> _Scripted | None:
        """The first scripted failure for this request: one for any request, or for ``action``."""
        head = next((s for s in self._script if s.action is None or s.action == action), None)
        if head is None:
            return None
        head.remaining -= 1
        if head.remaining <= 0:
            self._script.remove(head)
        return head

    async def transport_failure(self, scripted: _Scripted) -> web.Response | None:
        """Handle the pseudo-codes; ``None`` means the code is the vendor's own."""
        if scripted.code == HTTP_503:
            return web.Response(status=503, text="Service Unavailable")
        if scripted.code == STALL:
            await asyncio.sleep(self.stall_seconds)
            return web.Response(status=504, text="stalled")
        return None

    def reject(self, code: str, message: str) -> None:
        self.rejected.append((code, message))

    # -- receipts --------------------------------------------------------------

    async def post_receipts(self, callback_url: str, items: list[dict]) -> tuple[int, Any]:
        """POST one receipt batch the way the vendor does; returns the callback's answer."""
        async with aiohttp.ClientSession() as session:
            async with session.post(callback_url, json=items) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = await response.text()
                return response.status, body


def beijing_time(epoch: float) -> str:
    """Vendors report Beijing wall-clock time without an offset."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch + 8 * 3600))
