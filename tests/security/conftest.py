"""The three services in-process with the fake vendors, and two consortiums: the one the
tests attack (with real patient flow through it) and a foreign one whose staff attack."""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg
import grpc
import pytest

from notify.v1 import notify_service_pb2 as npb, notify_service_pb2_grpc as npb_grpc
from referral.v1 import referral_service_pb2 as rpb, referral_service_pb2_grpc as rpb_grpc
from scheduling.v1 import scheduling_service_pb2 as spb, scheduling_service_pb2_grpc as spb_grpc
from services.common.auth import Role
from services.notify.entrypoints.app import NotifyApp
from services.referral.entrypoints.app import build as build_referral
from services.scheduling.entrypoints.app import build as build_scheduling
from tests.fakes import sandbox
from tests.integration.referral.world import World, new_world, pdate
from tests.integration.scheduling.conftest import session, today
from tests.support.stack import running_service

SCHEMAS = ("referral", "scheduling", "notify")


@dataclass
class Services:
    stack: object
    referral: rpb_grpc.ReferralServiceStub
    scheduling: spb_grpc.SchedulingServiceStub
    notify: npb_grpc.NotifyServiceStub
    ports: dict[str, int]
    vendors: tuple
    db: asyncpg.Pool

    def stub(self, service: str):
        return getattr(self, service)


@dataclass
class Flow:
    """Patient data in the attacked consortium, made through the public APIs."""
    world: World
    referrals: list[rpb.Referral]
    bookings: list[str]
    notifications: list[str]
    # The plaintext identifiers the flow used: what no scan may find.
    secrets: list[str] = field(default_factory=list)


@pytest.fixture(scope="package")
async def services(stack):
    await stack.reset_streams()
    wechat, aliyun, tencent = sandbox.fakes()
    for fake in (wechat, aliyun, tencent):
        await fake.start()
    notify_env = {**sandbox.vendor_env(wechat, aliyun, tencent), "QUIET_HOURS": "off", "RECEIPTS_PORT": "0",
                  "NOTIFY_DISPATCH_POLL_SECONDS": "0.2", "NOTIFY_SMS_MIN_SPACING_SECONDS": "0"}
    # Service-specific settings come from the environment (Settings.reader()).
    env = {**notify_env, "REFERRAL_WATCH_POLL_SECONDS": "0.5", "REFERRAL_SLA_CHECK_SECONDS": "3600",
           "SCHEDULING_REOPTIMISE_SECONDS": "3600", "SCHEDULING_RELEASE_POLL_SECONDS": "3600",
           "SCHEDULER_TIME_LIMIT_SECONDS": "2"}
    notify = NotifyApp()
    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=4)
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    try:
        async with running_service(stack, "referral", build_referral, outbox_poll_seconds=0.2) as ref, \
                running_service(stack, "scheduling", build_scheduling, outbox_poll_seconds=0.2) as sch, \
                running_service(stack, "notify", notify.build, outbox_poll_seconds=0.2) as ntf:
            channels = {name: grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
                        for name, app in (("referral", ref), ("scheduling", sch), ("notify", ntf))}
            yield Services(stack, rpb_grpc.ReferralServiceStub(channels["referral"]),
                           spb_grpc.SchedulingServiceStub(channels["scheduling"]),
                           npb_grpc.NotifyServiceStub(channels["notify"]),
                           {"referral": ref.port, "scheduling": sch.port, "notify": ntf.port},
                           (wechat, aliyun, tencent), pool)
            for channel in channels.values():
                await channel.close()
    finally:
        patch.undo()
        await pool.close()
        for fake in (wechat, aliyun, tencent):
            await fake.stop()


async def eventually(check, timeout: float = 30.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(0.3)


@pytest.fixture(scope="package")
async def flow(stack, services) -> Flow:
    """Referrals created, accepted, scheduled by the engine and notified by SMS."""
    world = await new_world(stack, services.referral, "S" + uuid.uuid4().hex[:5].upper())
    desk = stack.metadata(world.hospital, Role.REFERRAL_DESK)
    day = today() + timedelta(days=3)
    await services.scheduling.PublishSessions(spb.PublishSessionsRequest(
        hospital_id=world.hospital, hospital_name="安全测试县医院",
        sessions=[session(f"{world.hospital}-S{i}", day + timedelta(days=i), department="neurology")
                  for i in range(2)]), metadata=desk)
    referrals, secrets = [], []
    for clinic in world.clinics:
        for _ in range(2):
            request = world.request(clinic=clinic)
            secrets += [request.patient.id_number, request.patient.mobile]
            created = await services.referral.CreateReferral(request, metadata=world.md(clinic))
            referrals.append(await services.referral.AcceptReferral(rpb.AcceptReferralRequest(
                name=created.name, note="同意"), metadata=desk))

    async def all_scheduled():
        got = [await services.referral.GetReferral(rpb.GetReferralRequest(name=r.name), metadata=desk)
               for r in referrals]
        return got if all(g.booking_id for g in got) else None
    scheduled = await eventually(all_scheduled, timeout=60)
    assert scheduled, [(g.state, g.waitlist_reason) for g in [
        await services.referral.GetReferral(rpb.GetReferralRequest(name=r.name), metadata=desk) for r in referrals]]

    async def notified():
        names = []
        for r in scheduled:
            reply = await services.notify.ListNotifications(npb.ListNotificationsRequest(
                referral_id=r.name.rpartition("/")[2]), metadata=desk)
            names += [n.name for n in reply.notifications if n.status == npb.DELIVERY_STATUS_DELIVERED
                      or n.status == npb.DELIVERY_STATUS_SENT]
        return names if len(names) >= len(scheduled) else None
    notifications = await eventually(notified) or []
    return Flow(world, scheduled, [r.booking_id for r in scheduled], notifications, secrets)


@pytest.fixture(scope="package")
async def foreign(stack, services) -> World:
    """Another consortium whose members try to reach the first one's data."""
    return await new_world(stack, services.referral, "F" + uuid.uuid4().hex[:5].upper())
