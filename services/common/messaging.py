"""JetStream connection, streams, and event envelopes.

Each service owns one stream named after it, holding subjects
`<service>.v1.<EventType>.<hospital_id>`: the hospital is the last token so that a
large deployment can shard consumers by hospital with a subject filter.
"""
from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta

import nats
from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from common.v1 import event_pb2
from services.common.logging import get_logger

log = get_logger(__name__)

STREAMS = {"referral": "REFERRAL", "scheduling": "SCHEDULING", "notify": "NOTIFY"}
# JetStream drops a re-published event with the same Nats-Msg-Id inside this window;
# the consumers' inbox covers anything older.
DUPLICATE_WINDOW_SECONDS = 600
# How long a stream keeps an event: a consumer reset or created anew can be handed one
# this old (the consumers' inbox retention is derived from it).
STREAM_MAX_AGE = timedelta(days=30)
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def stream_config(service: str, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=STREAMS[service], subjects=[f"{service}.v1.>"], retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE, num_replicas=replicas, max_age=STREAM_MAX_AGE.total_seconds(),
        duplicate_window=DUPLICATE_WINDOW_SECONDS, discard=DiscardPolicy.OLD)


def subject_for(event: Message, hospital_id: str) -> str:
    full_name = event.DESCRIPTOR.full_name  # e.g. referral.v1.ReferralSubmitted
    if not _TOKEN.match(hospital_id):
        raise ValueError(f"hospital id {hospital_id!r} is not usable in a subject")
    return f"{full_name}.{hospital_id}"


def envelope(event: Message, *, aggregate_id: str, hospital_id: str, request_id: str = "",
             traceparent: str = "", event_id: str | None = None) -> event_pb2.EventEnvelope:
    payload = any_pb2.Any()
    payload.Pack(event)
    occurred = timestamp_pb2.Timestamp()
    occurred.GetCurrentTime()
    return event_pb2.EventEnvelope(
        event_id=event_id or str(uuid.uuid4()), event_type=event.DESCRIPTOR.full_name,
        occur_time=occurred, aggregate_id=aggregate_id, hospital_id=hospital_id,
        request_id=request_id, traceparent=traceparent, payload=payload)


@dataclass
class Broker:
    """A NATS connection that reconnects forever and counts its reconnects.

    Pull subscriptions do not survive a server restart reliably (nats.py #504), so
    consumers compare `generation` and re-bind their subscription when it changes.
    """
    nc: nats.aio.client.Client
    js: nats.js.JetStreamContext
    generation: int = 0
    stream_replicas: int = 1

    @classmethod
    async def connect(cls, url: str, name: str, stream_replicas: int = 1) -> "Broker":
        broker: Broker | None = None
        reconnected = asyncio.Event()

        async def on_reconnect() -> None:
            if broker is not None:
                broker.generation += 1
            log.info("nats reconnected")
            reconnected.set()

        async def on_disconnect() -> None:
            log.warning("nats disconnected")

        async def on_error(exc: Exception) -> None:
            log.warning("nats error", error=str(exc))

        nc = await nats.connect(
            url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
            connect_timeout=5, allow_reconnect=True, drain_timeout=5, reconnected_cb=on_reconnect,
            disconnected_cb=on_disconnect, error_cb=on_error, ping_interval=10, max_outstanding_pings=3)
        broker = cls(nc=nc, js=nc.jetstream(timeout=5), stream_replicas=stream_replicas)
        return broker

    async def ensure_stream(self, service: str, replicas: int = 1) -> None:
        config = stream_config(service, replicas)
        try:
            await self.js.add_stream(config)
        except nats.js.errors.BadRequestError:
            # Exists with other settings: bring it to ours (idempotent on restart).
            await self.js.update_stream(config)

    async def ensure_streams(self, replicas: int = 1) -> None:
        for service in STREAMS:
            await self.ensure_stream(service, replicas)

    async def close(self) -> None:
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # noqa: BLE001 - closing anyway
                await self.nc.close()
