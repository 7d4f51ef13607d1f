"""Call any method of the three services generically, from the proto descriptors, so a
test covers every rpc without naming each (a new rpc is covered the day it is added)."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc
from google.protobuf import descriptor, message_factory

from notify.v1 import notify_service_pb2
from referral.v1 import referral_service_pb2
from scheduling.v1 import scheduling_service_pb2

SERVICE_DESCRIPTORS = {
    "referral": referral_service_pb2.DESCRIPTOR.services_by_name["ReferralService"],
    "scheduling": scheduling_service_pb2.DESCRIPTOR.services_by_name["SchedulingService"],
    "notify": notify_service_pb2.DESCRIPTOR.services_by_name["NotifyService"],
}


def all_methods() -> list[tuple[str, descriptor.MethodDescriptor]]:
    return [(svc, m) for svc, d in SERVICE_DESCRIPTORS.items() for m in d.methods]


def method_ids() -> list[str]:
    return [f"{svc}.{m.name}" for svc, m in all_methods()]


def request_class(method: descriptor.MethodDescriptor):
    return message_factory.GetMessageClass(method.input_type)


@dataclass
class Outcome:
    code: grpc.StatusCode
    responses: list = field(default_factory=list)
    details: str = ""

    @property
    def ok(self) -> bool:
        return self.code == grpc.StatusCode.OK


async def invoke(services, svc: str, method: descriptor.MethodDescriptor, request, metadata,
                 stream_seconds: float = 1.5) -> Outcome:
    """One call; a server stream is read for `stream_seconds` (an open, silent stream is OK
    with no responses: it delivered nothing)."""
    rpc = getattr(services.stub(svc), method.name)
    try:
        if not method.server_streaming:
            return Outcome(grpc.StatusCode.OK, [await rpc(request, metadata=metadata, timeout=30)])
        call = rpc(request, metadata=metadata)
        received: list = []

        async def drain():
            async for item in call:
                received.append(item)
        try:
            await asyncio.wait_for(drain(), stream_seconds)
        except asyncio.TimeoutError:
            call.cancel()
        return Outcome(grpc.StatusCode.OK, received)
    except grpc.aio.AioRpcError as exc:
        return Outcome(exc.code(), [], exc.details() or "")


def fill(msg, values: dict[str, str], depth: int = 0) -> None:
    """Sets every string field whose name is a key of `values`, in nested messages too:
    how a hostile caller names another institution's resources in a request body."""
    for f in msg.DESCRIPTOR.fields:
        if f.is_repeated:
            continue
        if f.type == f.TYPE_STRING and f.name in values:
            setattr(msg, f.name, values[f.name])
        elif f.type == f.TYPE_MESSAGE and depth < 3 and not f.message_type.full_name.startswith("google."):
            fill(getattr(msg, f.name), values, depth + 1)
