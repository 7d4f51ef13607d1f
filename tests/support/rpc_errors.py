"""What a refused call carries in its google.rpc.Status, read as a client would read it
(grpc_status.rpc_status also checks that the status agrees with the call's code and text)."""
from __future__ import annotations

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def detail(err: grpc.aio.AioRpcError, kind: type[Message]) -> Message | None:
    """The first detail of that type, or None."""
    status = rpc_status.from_call(err)
    for packed in status.details if status is not None else ():
        found = kind()
        if packed.Unpack(found):
            return found
    return None


def field_violations(err: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The (field, description) pairs of the call's BadRequest, in order."""
    bad = detail(err, error_details_pb2.BadRequest)
    return [(v.field, v.description) for v in bad.field_violations] if bad is not None else []


def reason(err: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason, "" when there is none."""
    info = detail(err, error_details_pb2.ErrorInfo)
    return info.reason if info is not None else ""
