import uuid

import asyncpg
import pytest
from nats.js.api import StreamConfig

from common.v1 import types_pb2
from services.common import db, messaging
from services.common.consumer import Subscription

TEST_STREAM = "RUNTIME_TEST"


def recording(prefix: str, hospital: str) -> tuple[Subscription, list[str]]:
    """A durable consumer of one hospital's test events, and the ids it applies, in order."""
    applied: list[str] = []

    async def effect(conn, env, payload):
        applied.append(env.event_id)

    sub = Subscription(durable=f"{prefix}_{hospital}", stream=TEST_STREAM,
                       filter_subjects=[f"common.v1.Date.{hospital}"]).on(types_pb2.Date, effect)
    return sub, applied


@pytest.fixture
async def schema(stack):
    """A throw-away schema holding only the shared runtime's tables."""
    name = f"rt_{uuid.uuid4().hex[:8]}"
    await db.migrate(stack.database_url, name, name)
    yield name
    conn = await asyncpg.connect(stack.database_url)
    await conn.execute(f"DROP SCHEMA {name} CASCADE")
    await conn.close()


@pytest.fixture
async def pool(stack, schema):
    p = await db.create_pool(stack.database_url, schema, min_size=1, max_size=5)
    yield p
    await p.close()


@pytest.fixture
async def broker(stack):
    b = await messaging.Broker.connect(stack.nats_url, name="runtime-test")
    # Test events are common.v1 messages; give them a stream of their own.
    try:
        await b.js.add_stream(StreamConfig(name=TEST_STREAM, subjects=["common.v1.>"],
                                           duplicate_window=messaging.DUPLICATE_WINDOW_SECONDS))
    except Exception:  # noqa: BLE001 - exists from an earlier test
        pass
    yield b
    await b.close()
