"""A trivial grpc.aio service that answers every unary call with its request bytes:
the ceiling of Python gRPC on this machine, run as its own process like a service, on
the event loop the services run on (services.common.app.run)."""
from __future__ import annotations

import sys

import grpc

from services.common.app import run

METHOD = "/bench.Echo/Echo"


async def serve(port: int) -> None:
    async def echo(request: bytes, context) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler("bench.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    run(serve(int(sys.argv[1])))
