"""The three real services as processes, a consortium whose hospital has reserved places,
referral traffic sent as a retrying client sends it, and what it became downstream."""
from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, timedelta

import asyncpg
import grpc

from common.v1 import event_pb2
from referral.v1 import referral_service_pb2 as rapi
from referral.v1 import referral_service_pb2_grpc as rapi_grpc
from scheduling.v1 import events_pb2 as sevents
from scheduling.v1 import scheduling_service_pb2 as spb
from scheduling.v1 import scheduling_service_pb2_grpc as spb_grpc
from services.common import messaging
from services.common.auth import Role
from services.referral.domain.model import State
from tests.integration.referral.world import World, new_world, pdate
from tests.support.processes import ServiceProcess, call_retrying, channel, until
from tests.support.stack import TestStack

# Fast relays so that latencies measured are the system's, not a poll interval; periodic
# jobs pushed out of the way so that only the traffic under test moves state.
REFERRAL_ENV = dict(OUTBOX_POLL_SECONDS="0.2", REFERRAL_SLA_CHECK_SECONDS="3600", REFERRAL_WATCH_POLL_SECONDS="1")
SCHEDULING_ENV = dict(OUTBOX_POLL_SECONDS="0.2", SCHEDULING_REOPTIMISE_SECONDS="3600",
                      SCHEDULING_RELEASE_POLL_SECONDS="3600", SCHEDULER_TIME_LIMIT_SECONDS="1")
NOTIFY_ENV = dict(OUTBOX_POLL_SECONDS="0.2", QUIET_HOURS="off")


def three_services(stack: TestStack, referral_module: str = "", referral_args: tuple[str, ...] = ("serve",),
                   **referral_env: str) -> tuple[ServiceProcess, ServiceProcess, ServiceProcess]:
    referral = ServiceProcess(stack, "referral", module=referral_module, args=referral_args,
                              **{**REFERRAL_ENV, **referral_env})
    return referral, ServiceProcess(stack, "scheduling", **SCHEDULING_ENV), ServiceProcess(stack, "notify", **NOTIFY_ENV)


@dataclass
class Site:
    """A consortium (world) and the scheduling stub of its hospital."""
    world: World
    scheduling: spb_grpc.SchedulingServiceStub

    @property
    def hospital(self) -> str:
        return self.world.hospital


@contextlib.asynccontextmanager
async def open_site(stack: TestStack, referral: ServiceProcess, scheduling: ServiceProcess | None = None,
                    places_per_day: int = 0) -> AsyncIterator[Site]:
    """A fresh consortium; with a scheduling service, `places_per_day` reserved neurology
    places on each date the referrals offer (world.request: today + 3 and + 4)."""
    async with channel(referral.target) as rch, contextlib.AsyncExitStack() as exits:
        world = await new_world(stack, rapi_grpc.ReferralServiceStub(rch), uuid.uuid4().hex[:6].upper())
        sched = None
        if scheduling is not None:
            sch = await exits.enter_async_context(channel(scheduling.target))
            sched = spb_grpc.SchedulingServiceStub(sch)
            soon = date.today() + timedelta(days=3)
            sessions = [spb.OutpatientSession(
                session_id=f"{world.hospital}-S{i}", department="neurology", doctor_id=f"D{i}", doctor_name="李医生",
                title=spb.DOCTOR_TITLE_GENERAL, date=pdate(soon + timedelta(days=i)), half_day=spb.HALF_DAY_AM,
                start_time="08:00", end_time="12:00", slot_minutes=15, total_places=places_per_day * 2,
                reserved_places=places_per_day, place=sevents.Place(building="门诊楼", floor="2层", room="神经内科1诊室"))
                for i in range(2)] if places_per_day else []
            if sessions:
                await sched.PublishSessions(spb.PublishSessionsRequest(
                    hospital_id=world.hospital, hospital_name="测试县人民医院", sessions=sessions),
                    metadata=stack.metadata(world.hospital, Role.REFERRAL_DESK))
        yield Site(world, sched)


async def accept(world: World, name: str, **kw) -> None:
    try:
        await call_retrying(world.stub.AcceptReferral, rapi.AcceptReferralRequest(name=name),
                            metadata=world.md(world.hospital), **kw)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise
        # A retry of an accept whose first attempt committed: the referral has moved on.
        got = await call_retrying(world.stub.GetReferral, rapi.GetReferralRequest(name=name),
                                  metadata=world.md(world.hospital))
        if got.state in (State.DRAFT, State.SUBMITTED, State.RETURNED):
            raise


async def refer_and_accept(world: World, count: int, concurrency: int = 4, **kw) -> list[str]:
    """Referral ids of `count` referrals created (with request ids) and accepted."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> str:
        async with gate:
            created = await call_retrying(world.stub.CreateReferral, world.request(),
                                          metadata=world.md(world.clinics[0]), **kw)
            await accept(world, created.name, **kw)
            return created.name.split("/")[1]

    return list(await asyncio.gather(*(one() for _ in range(count))))


@dataclass
class Databases:
    referral: asyncpg.Connection
    scheduling: asyncpg.Connection
    notify: asyncpg.Connection


@contextlib.asynccontextmanager
async def databases(stack: TestStack) -> AsyncIterator[Databases]:
    """Read-only views of each service's schema, as an auditor would check them."""
    conns = []
    try:
        for schema in ("referral", "scheduling", "notify"):
            conns.append(await asyncpg.connect(stack.database_url, server_settings={"search_path": schema}))
        yield Databases(*conns)
    finally:
        for conn in conns:
            await conn.close()


async def unsent(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")


async def wait_outbox_drained(*conns: asyncpg.Connection, timeout: float = 30.0) -> int:
    """Unsent outbox rows left in these schemas once they drained (0) or the time ran out."""
    async def left() -> int:
        return sum([await unsent(c) for c in conns])
    await until(lambda: _is_zero(left()), timeout)
    return await left()


async def _is_zero(count) -> bool:
    return await count == 0


@dataclass
class Downstream:
    accepted_events: int
    missing_bookings: list[str]      # accepted referrals the scheduler never booked
    duplicate_bookings: int          # bookings beyond one per referral
    not_scheduled: list[str]         # referrals whose ReferralScheduled never came back
    unnotified_events: list[str]     # ReferralAccepted events notify made no notification of
    duplicate_notifications: int     # notifications beyond one per (event, recipient, template, part)

    @property
    def missing(self) -> int:
        return len(self.missing_bookings) + len(self.not_scheduled) + len(self.unnotified_events)

    @property
    def duplicated(self) -> int:
        return self.duplicate_bookings + self.duplicate_notifications


async def downstream(db: Databases, referral_ids: list[str]) -> Downstream:
    """What the accepted referrals became in the other services' databases: one booking
    each (scheduling), the referral back at SCHEDULED (referral, via the scheduler's
    event), and notifications of each acceptance (notify)."""
    accepted = [str(r["event_id"]) for r in await db.referral.fetch(
        "SELECT event_id FROM outbox WHERE event_type = 'referral.v1.ReferralAccepted' "
        "AND aggregate_id = ANY($1::text[])", referral_ids)]
    bookings = {r["referral_id"]: r["n"] for r in await db.scheduling.fetch(
        "SELECT referral_id, count(*) AS n FROM bookings WHERE referral_id = ANY($1::text[]) GROUP BY referral_id",
        referral_ids)}
    scheduled = {r["referral_id"] for r in await db.referral.fetch(
        "SELECT referral_id FROM referrals WHERE referral_id = ANY($1::text[]) AND state = $2",
        referral_ids, int(State.SCHEDULED))}
    notified = {str(r["event_id"]) for r in await db.notify.fetch(
        "SELECT DISTINCT event_id FROM notifications WHERE event_id = ANY($1::uuid[])", accepted)}
    repeated = await db.notify.fetchval(
        "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM notifications "
        "WHERE event_id = ANY($1::uuid[]) GROUP BY event_id, recipient, template, part) t", accepted)
    return Downstream(
        accepted_events=len(accepted), missing_bookings=[r for r in referral_ids if r not in bookings],
        duplicate_bookings=sum(n - 1 for n in bookings.values()),
        not_scheduled=[r for r in referral_ids if r not in scheduled],
        unnotified_events=[e for e in accepted if e not in notified], duplicate_notifications=int(repeated))


async def settled(db: Databases, referral_ids: list[str], timeout: float) -> Downstream:
    """Downstream once every referral was booked, came back SCHEDULED and was notified (or at the timeout)."""
    result = await until(lambda: _complete(db, referral_ids), timeout, interval=0.3)
    return result or await downstream(db, referral_ids)


async def _complete(db: Databases, referral_ids: list[str]) -> Downstream | None:
    d = await downstream(db, referral_ids)
    return d if d.missing == 0 and d.accepted_events == len(referral_ids) else None


async def stream_events(stack: TestStack, subject: str) -> list[str]:
    """The event ids JetStream holds on a subject, one per message: a re-published
    event that got past the duplicate window would appear twice."""
    broker = await messaging.Broker.connect(stack.nats_url, name="reliability-audit")
    try:
        stream = messaging.STREAMS[subject.split(".")[0]]
        sub = await broker.js.pull_subscribe(subject, stream=stream)
        ids: list[str] = []
        while True:
            try:
                msgs = await sub.fetch(200, timeout=1.0)
            except Exception:  # noqa: BLE001 - nats.errors.TimeoutError: the subject is read to its end
                break
            for m in msgs:
                await m.ack()
                ids.append(event_pb2.EventEnvelope.FromString(m.data).event_id)
        await sub.unsubscribe()
        return ids
    finally:
        await broker.close()
