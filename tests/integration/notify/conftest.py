import pytest

from services.common import messaging

from .notify_support import fakes


@pytest.fixture(scope="module", autouse=True)
async def fresh_streams(stack):
    # Notify consumes every referral and scheduling event; other modules' events would
    # otherwise reach these tests' fake vendors.
    await stack.reset_streams()


@pytest.fixture
async def vendors():
    wechat, aliyun, tencent = fakes()
    for fake in (wechat, aliyun, tencent):
        await fake.start()
    yield wechat, aliyun, tencent
    for fake in (wechat, aliyun, tencent):
        await fake.stop()


@pytest.fixture
async def broker(stack):
    b = await messaging.Broker.connect(stack.nats_url, name="notify-test")
    await b.ensure_streams()
    yield b
    await b.close()


@pytest.fixture
async def db(stack):
    import asyncpg
    conn = await asyncpg.connect(stack.database_url, server_settings={"search_path": "notify"})
    yield conn
    await conn.close()
