"""A service built on the shared runtime with one slow method, for shutdown tests.

It registers a raw-bytes generic handler, so it needs no proto of its own:
`/test.v1.Slow/Sleep` sleeps the number of milliseconds in the request body.
"""
from __future__ import annotations

import asyncio

import grpc

from services.common import app

SERVICE = "test.v1.Slow"


async def _sleep(request: bytes, context) -> bytes:
    await asyncio.sleep(int(request.decode() or "0") / 1000)
    return b"done"


def register(server: grpc.aio.Server) -> list[str]:
    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Sleep": grpc.unary_unary_rpc_method_handler(_sleep),
    })
    server.add_generic_rpc_handlers((handler,))
    return [SERVICE]


def build(ctx: app.AppContext) -> app.ServiceParts:
    return app.ServiceParts(registrars=[register])


if __name__ == "__main__":
    # Borrows the referral service's settings (schema, defaults) but none of its code.
    app.main("referral", build)
