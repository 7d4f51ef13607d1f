"""The HTTP endpoint for delivery receipts: POST /receipts/aliyun and /receipts/tencent,
and, when a WeChat token is configured, GET/POST /wechat/events (WeChat's server URL).

Mounted with the channel package's handler factories, which parse each vendor's format
and answer as that vendor expects; the store applies each receipt once.
"""
from __future__ import annotations

import asyncio

from aiohttp import web

from services.common.logging import get_logger
from services.notify.adapters.channels import RecentKeys, receipt_routes, wechat_event_routes

log = get_logger(__name__)


class ReceiptsServer:
    def __init__(self, on_receipts, *, port: int, host: str = "0.0.0.0", phone_hasher,
                 on_wechat_choices, wechat_token: str = "", openid_hasher=None) -> None:
        self._on_receipts = on_receipts
        self._on_wechat_choices = on_wechat_choices
        self._wechat_token = wechat_token
        self._openid_hasher = openid_hasher
        self._host = host
        self._requested_port = port
        self._hasher = phone_hasher
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.started = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20)
        recent = RecentKeys(50_000)
        app.add_routes(receipt_routes(self._on_receipts, phone_hasher=self._hasher, recent=recent))
        if self._wechat_token:
            app.add_routes(wechat_event_routes(self._on_receipts, on_choices=self._on_wechat_choices,
                                               token=self._wechat_token,
                                               openid_hasher=self._openid_hasher or self._hasher, recent=recent))
        app.add_routes([web.get("/healthz", _healthz)])
        return app

    async def run(self) -> None:
        """A background job: serve until cancelled."""
        try:
            await self._serve()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("receipts endpoint failed", error=repr(exc))
            raise

    async def _serve(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._requested_port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self.started.set()
        log.info("receipts endpoint listening", port=self.port)
        try:
            await asyncio.Event().wait()
        finally:
            await self._runner.cleanup()


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")
