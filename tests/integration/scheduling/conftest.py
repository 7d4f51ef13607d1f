"""The scheduling service in-process against the session's PostgreSQL and NATS.

Each test gets its own hospital id and runs the service sharded to that hospital, so
its durable consumer sees only its own events though the stream is shared."""
from __future__ import annotations

import asyncio
import uuid
from datetime import date, datetime, timedelta

import grpc
import pytest

from common.v1 import event_pb2, types_pb2
from referral.v1 import events_pb2 as revents
from referral.v1 import types_pb2 as rtypes
from scheduling.v1 import events_pb2, scheduling_service_pb2 as pb
from scheduling.v1 import scheduling_service_pb2_grpc as pb_grpc
from services.common import messaging
from services.scheduling.domain import calendar
from services.scheduling.entrypoints.app import build
from tests.support.stack import running_service


@pytest.fixture(scope="session")
async def scheduling_schema(stack):
    await stack.reset_schema("scheduling")


@pytest.fixture
def hospital() -> str:
    return f"H{uuid.uuid4().hex[:8].upper()}"


@pytest.fixture
async def app(stack, scheduling_schema, hospital):
    extra = {"SCHEDULING_HOSPITAL_SHARD": hospital, "SCHEDULING_REOPTIMISE_SECONDS": "3600",
             "SCHEDULING_RELEASE_POLL_SECONDS": "3600", "SCHEDULER_TIME_LIMIT_SECONDS": "2"}
    async with running_service(stack, "scheduling", build, extra=extra, db_pool_max=20) as service:
        yield service


@pytest.fixture
async def stub(app):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield pb_grpc.SchedulingServiceStub(channel)


class Events:
    """Everything the service publishes for one hospital on the SCHEDULING stream."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []
        self._changed = asyncio.Event()

    async def _on(self, msg) -> None:
        env = event_pb2.EventEnvelope.FromString(msg.data)
        name = env.event_type.split(".")[-1]
        payload = getattr(events_pb2, name)()
        env.payload.Unpack(payload)
        self.seen.append((name, payload))
        self._changed.set()

    def of(self, name: str, **match) -> list:
        return [p for n, p in self.seen if n == name and all(getattr(p, k) == v for k, v in match.items())]

    async def wait(self, name: str, timeout: float = 15.0, count: int = 1, **match) -> list:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(found := self.of(name, **match)) < count:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"{count} {name} {match} not seen; seen {[n for n, _ in self.seen]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(left, 0.5))
            except asyncio.TimeoutError:
                pass
        return found


@pytest.fixture
async def events(app, hospital):
    collected = Events()
    sub = await app.ctx.broker.js.subscribe(f"scheduling.v1.*.{hospital}", ordered_consumer=True, cb=collected._on)
    yield collected
    await sub.unsubscribe()


def today() -> date:
    return calendar.local_date(datetime.now(calendar.LOCAL))


def pdate(d: date) -> types_pb2.Date:
    return types_pb2.Date(year=d.year, month=d.month, day=d.day)


def session(sid: str, day: date, *, department="cardiology", total=20, reserved=10, start="08:00", end="12:00",
            slot=30, title=pb.DOCTOR_TITLE_GENERAL, overflow=0) -> pb.OutpatientSession:
    return pb.OutpatientSession(
        session_id=sid, department=department, doctor_id=f"D-{sid}", doctor_name="王医生", title=title,
        date=pdate(day), half_day=pb.HALF_DAY_AM if start < "12:00" else pb.HALF_DAY_PM, start_time=start,
        end_time=end, slot_minutes=slot, total_places=total, reserved_places=reserved, overflow_places=overflow,
        place=events_pb2.Place(building="门诊楼", floor="3层", room="心内科3诊室"))


def referral(hospital: str, *needs: rtypes.ResourceNeed, clinic="CLINIC01", rid: str | None = None,
             urgency=types_pb2.URGENCY_ROUTINE, gender=rtypes.GENDER_FEMALE, age=60,
             dates: list[date] | None = None) -> rtypes.ReferralSnapshot:
    return rtypes.ReferralSnapshot(
        referral_id=rid or f"R{uuid.uuid4().hex[:12]}", direction=rtypes.DIRECTION_UP, sending_institution_id=clinic,
        receiving_institution_id=hospital, hospital_id=hospital, urgency=urgency,
        state=rtypes.REFERRAL_STATE_ACCEPTED, clinic_distance_km=35.0,
        patient=rtypes.PatientSummary(patient_id=f"P{uuid.uuid4().hex[:10]}", name_masked="张*华", gender=gender,
                                      age_years=age),
        needs=list(needs) or [consultation()], available_dates=[pdate(d) for d in dates or []])


def consultation(department="cardiology", need_id="n-consult") -> rtypes.ResourceNeed:
    return rtypes.ResourceNeed(need_id=need_id, consultation=rtypes.ConsultationNeed(department=department))


def exam(modality="CT", need_id="n-ct") -> rtypes.ResourceNeed:
    return rtypes.ResourceNeed(need_id=need_id, exam=rtypes.ExamNeed(modality=modality, body_part="chest"))


def admission(department="cardiology", nights=2, need_id="n-adm", required=()) -> rtypes.ResourceNeed:
    return rtypes.ResourceNeed(need_id=need_id, admission=rtypes.AdmissionNeed(
        department=department, expected_nights=nights, required_equipment=list(required)))


async def publish_event(app, message, snapshot: rtypes.ReferralSnapshot, occurred: datetime | None = None) -> str:
    """A referral event as the referral service's relay would publish it (`occurred`: when
    it happened, if not now)."""
    await app.ctx.broker.ensure_stream("referral")
    env = messaging.envelope(message, aggregate_id=snapshot.referral_id, hospital_id=snapshot.hospital_id)
    if occurred is not None:
        env.occur_time.FromDatetime(occurred)
    await app.ctx.broker.js.publish(messaging.subject_for(message, snapshot.hospital_id), env.SerializeToString(),
                                    headers={"Nats-Msg-Id": env.event_id})
    return env.event_id


async def accept(app, snapshot, occurred: datetime | None = None) -> str:
    return await publish_event(app, revents.ReferralAccepted(referral=snapshot), snapshot, occurred)


__all__ = ["admission", "accept", "consultation", "exam", "pdate", "publish_event", "referral", "session", "today",
           "timedelta"]
