"""Shared pieces of the notify service tests: fakes wired from the template catalogue,
synthetic referral and scheduling events, an adjustable clock, polling helpers."""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from common.v1 import types_pb2
from referral.v1 import events_pb2 as ref_ev
from referral.v1 import types_pb2 as ref_types
from scheduling.v1 import events_pb2 as sch_ev
from services.common import messaging
from services.common.pii import PiiCipher
from services.notify.domain.model import SHANGHAI
from services.notify.domain.templates import Catalogue
from services.notify.entrypoints.app import NotifyApp
from tests.fakes import sandbox
from tests.support.stack import running_service

CATALOGUE = Catalogue.load()


def new_mobile() -> str:
    return "139" + f"{random.randrange(10**8):08d}"


def new_openid() -> str:
    return ("oNotify" + uuid.uuid4().hex)[:28]


class AdjustableClock:
    """Real time plus an offset the test moves; the service's policy clock, not the vendors'."""

    def __init__(self, at: datetime | None = None) -> None:
        self.offset = timedelta()
        if at is not None:
            self.set_local(at)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def set_local(self, when: datetime) -> None:
        self.offset = when - datetime.now(UTC)

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


def fakes():
    return sandbox.fakes(CATALOGUE)


def vendor_env(wechat, aliyun, tencent, vendor: str = "aliyun") -> dict[str, str]:
    """The sandbox wiring plus timings short enough for tests."""
    return {
        **sandbox.vendor_env(wechat, aliyun, tencent, vendor),
        "QUIET_HOURS": "off", "RECEIPTS_PORT": "0",
        "NOTIFY_DISPATCH_POLL_SECONDS": "0.2", "NOTIFY_RETRY_BASE_SECONDS": "0.2", "NOTIFY_RETRY_MAX_SECONDS": "1",
        "NOTIFY_SMS_MIN_SPACING_SECONDS": "0", "NOTIFY_SMS_PER_HOUR": "50", "NOTIFY_SMS_PER_DAY": "100",
        "NOTIFY_SMS_SAME_TEMPLATE_PER_DAY": "50",
    }


@contextlib.asynccontextmanager
async def notify_service(stack, monkeypatch, env: dict[str, str], clock: AdjustableClock | None = None,
                         restart: bool = False):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if not restart:
        await _retire_other_tests_deliveries(stack)
    notify = NotifyApp(clock=clock)
    async with running_service(stack, "notify", notify.build) as app:
        await asyncio.wait_for(notify.receipts.started.wait(), 10)
        yield app, notify


async def _retire_other_tests_deliveries(stack) -> None:
    """The session shares one database: earlier tests' waiting deliveries (held for quiet
    hours, a cap, a reminder) would fall due under this test's clock and reach its fakes."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        if await conn.fetchval("SELECT to_regclass('notify.deliveries') IS NOT NULL"):
            await conn.execute("UPDATE notify.deliveries SET status = 'CANCELLED', status_reason = 'test isolation' "
                               "WHERE status IN ('PENDING', 'SENDING')")
    finally:
        await conn.close()


def pii(stack) -> PiiCipher:
    return PiiCipher.from_config("", "", stack.data_dir)


class Patient:
    def __init__(self, stack, *, mobile: str | None = "", openid: str = "") -> None:
        self.patient_id = "P" + uuid.uuid4().hex
        self.mobile = new_mobile() if mobile == "" else mobile
        self.openid = openid
        self._pii = pii(stack)

    def summary(self) -> ref_types.PatientSummary:
        return ref_types.PatientSummary(
            patient_id=self.patient_id, name_masked="张*华", gender=ref_types.GENDER_FEMALE, age_years=63,
            mobile_ciphertext=self._pii.encrypt(self.mobile, context="mobile") if self.mobile else "",
            wechat_openid=self.openid)


class Referral:
    def __init__(self, patient: Patient, *, urgent: bool = False, department: str = "cardiology") -> None:
        self.referral_id = "R" + uuid.uuid4().hex[:12]
        self.hospital_id = "H" + uuid.uuid4().hex[:6]
        self.clinic_id = "C" + uuid.uuid4().hex[:6]
        self.patient = patient
        self.urgent = urgent
        self.department = department

    def snapshot(self, state=ref_types.REFERRAL_STATE_ACCEPTED) -> ref_types.ReferralSnapshot:
        return ref_types.ReferralSnapshot(
            referral_id=self.referral_id, direction=ref_types.DIRECTION_UP,
            sending_institution_id=self.clinic_id, receiving_institution_id=self.hospital_id,
            hospital_id=self.hospital_id,
            urgency=types_pb2.URGENCY_URGENT if self.urgent else types_pb2.URGENCY_ROUTINE,
            state=state, patient=self.patient.summary(), department=self.department)

    def accepted(self):
        return ref_ev.ReferralAccepted(referral=self.snapshot())

    def item(self, start: datetime, *, kind=sch_ev.ITEM_KIND_CONSULTATION, item_id: str = "", **place):
        p = {"hospital_name": "县人民医院", "building": "门诊楼", "floor": "3楼", "room": "心内科2诊室", **place}
        it = sch_ev.BookedItem(item_id=item_id or "I" + uuid.uuid4().hex[:8], need_id="n1", kind=kind,
                               place=sch_ev.Place(**p), department="cardiology")
        it.start_time.FromDatetime(start.astimezone(UTC))
        it.end_time.FromDatetime((start + timedelta(minutes=30)).astimezone(UTC))
        return it

    def scheduled(self, items, booking_id: str = "", bring: str = "身份证、医保卡、既往检查结果"):
        return sch_ev.ReferralScheduled(referral_id=self.referral_id, booking_id=booking_id or "B" + uuid.uuid4().hex[:8],
                                        hospital_id=self.hospital_id, sending_institution_id=self.clinic_id,
                                        items=items, trips=1, bring=bring)


async def publish(broker: messaging.Broker, event, referral: Referral, *, event_id: str | None = None,
                  msg_id: str | None = None) -> str:
    env = messaging.envelope(event, aggregate_id=referral.referral_id, hospital_id=referral.hospital_id,
                             event_id=event_id)
    await broker.js.publish(messaging.subject_for(event, referral.hospital_id), env.SerializeToString(),
                            headers={"Nats-Msg-Id": msg_id or env.event_id})
    return env.event_id


async def delivery_of(db, referral_id: str):
    """The delivery of a referral's only message (None before it is planned)."""
    return await db.fetchrow("SELECT d.* FROM notify.deliveries d JOIN notify.notifications n "
                             "ON n.id = d.notification_id WHERE n.referral_id = $1", referral_id)


async def has_status(db, referral_id: str, status: str) -> bool:
    row = await delivery_of(db, referral_id)
    return row is not None and row["status"] == status


async def eventually(predicate, timeout: float = 10.0, interval: float = 0.1):
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


def local(year, month, day, hour, minute=0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=SHANGHAI)
