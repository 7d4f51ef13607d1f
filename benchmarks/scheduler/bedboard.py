"""The bed manager's call that blocks a bed with admissions booked on it.

``python -m benchmarks.scheduler.bedboard [--quick]``, and part of ``make bench-scheduler``
(``--skip-bedboard`` leaves it out). Figures, not tests.

Each hospital has outpatient sessions in a number of departments over the horizon (the
capacity every engine run loads), one ward of beds and N one-night admissions with a
consultation booked on bed B0; then B0 is blocked (UpdateBedStatus, through the service
layer as the gRPC call runs it). Timed: the call's work inside its transaction, with the
hospital's lock held, then rolled back so each run starts from the same board. Both ways
of moving the bookings off the bed run on the same state: one engine run for all of them
(what the service does) and one run per booking (``bookings.displace_one``, the fallback
and what the service did before).

Needs PostgreSQL: DATABASE_URL when set, else an embedded one in a temporary folder. It
works in its own schema (``bench_scheduling``), dropped at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Callable

import asyncpg

from common.v1 import types_pb2
from referral.v1 import types_pb2 as rtypes
from scheduling.v1 import events_pb2, scheduling_service_pb2 as pb
from services.common import db
from services.common import logging as logs
from services.scheduling.adapters import repository as repo
from services.scheduling.domain import calendar
from services.scheduling.domain.beds import BedStatus
from services.scheduling.service_layer import bedboard, bookings, resources
from services.scheduling.service_layer.allocation import Scheduler, allocate
from services.scheduling.settings import SchedulerSettings

from .runner import _table

SCHEMA = "bench_scheduling"


@dataclass(frozen=True)
class BedBoardConfig:
    sizes: tuple[int, ...]  # admissions booked on the bed that is blocked (at most 14: the routine window)
    departments: tuple[int, ...]  # outpatient departments with sessions over the horizon
    spare_beds: int  # the ward's other beds, free once the admissions are booked
    repeats: int  # runs of each way; the median is shown
    time_limit: float  # CP-SAT seconds per engine run, as SCHEDULER_TIME_LIMIT_SECONDS

    @staticmethod
    def full() -> BedBoardConfig:
        return BedBoardConfig(sizes=(1, 5, 10, 14), departments=(10, 40), spare_beds=200, repeats=3, time_limit=2.0)

    @staticmethod
    def quick() -> BedBoardConfig:
        return BedBoardConfig(sizes=(1, 5, 14), departments=(10,), spare_beds=40, repeats=1, time_limit=2.0)

    def with_overrides(self, **kw) -> BedBoardConfig:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


@dataclass
class _CountingScheduler(Scheduler):
    runs: int = 0

    async def solve(self, problem, kind):
        self.runs += 1
        return await super().solve(problem, kind)


def _pdate(d: date) -> types_pb2.Date:
    return types_pb2.Date(year=d.year, month=d.month, day=d.day)


def _admission(hospital: str, day: date) -> rtypes.ReferralSnapshot:
    """A routine referral for a consultation and one night on the ward, the patient free on `day` only."""
    return rtypes.ReferralSnapshot(
        referral_id=f"R{uuid.uuid4().hex[:12]}", direction=rtypes.DIRECTION_UP, sending_institution_id="CLINIC01",
        receiving_institution_id=hospital, hospital_id=hospital, urgency=types_pb2.URGENCY_ROUTINE,
        state=rtypes.REFERRAL_STATE_ACCEPTED, clinic_distance_km=35.0,
        patient=rtypes.PatientSummary(patient_id=f"P{uuid.uuid4().hex[:10]}", name_masked="张*华",
                                      gender=rtypes.GENDER_FEMALE, age_years=60),
        needs=[rtypes.ResourceNeed(need_id="n-consult", consultation=rtypes.ConsultationNeed(department="cardiology")),
               rtypes.ResourceNeed(need_id="n-adm", admission=rtypes.AdmissionNeed(department="cardiology",
                                                                                   expected_nights=1))],
        available_dates=[_pdate(day)])


async def _set_beds(conn, sched: Scheduler, hospital: str, bed_ids: list[str], status: BedStatus) -> None:
    for b in bed_ids:
        async with conn.transaction():
            await bedboard.update_status(conn, sched, b, hospital, status, None)


async def _hospital(pool: asyncpg.Pool, sched: Scheduler, departments: int, spare: int, n: int) -> str:
    """A hospital with `n` admissions (and their consultations) on bed B0, the other beds free."""
    hospital = f"BENCH{uuid.uuid4().hex[:8].upper()}"
    today = calendar.local_date(sched.clock())
    depts = ["cardiology"] + [f"dept{i:02d}" for i in range(departments - 1)]
    sessions = [pb.OutpatientSession(
        session_id=f"{hospital}-{dep}-{d:02d}-{half}", department=dep, doctor_id=f"D-{dep}-{half}", doctor_name="王医生",
        title=pb.DOCTOR_TITLE_GENERAL, date=_pdate(today + timedelta(days=d)),
        half_day=pb.HALF_DAY_AM if half == 0 else pb.HALF_DAY_PM, start_time=start, end_time=end, slot_minutes=30,
        total_places=20, reserved_places=10, place=events_pb2.Place(building="门诊楼", floor="3层", room="诊室"))
        for dep in depts for d in range(sched.settings.horizon_days)
        for half, (start, end) in enumerate((("08:00", "12:00"), ("13:30", "17:30")))]
    spare_ids = [f"{hospital}-S{i:03d}" for i in range(spare)]
    rooms = [pb.WardRoom(room_id=f"{hospital}-R0", label="500", capacity=1, gender_policy=pb.GENDER_POLICY_ANY,
                         beds=[pb.BedSpec(bed_id=f"{hospital}-B0", label="0床")])]
    rooms += [pb.WardRoom(room_id=f"{hospital}-R{k + 1}", label=f"5{k + 1:02d}", capacity=4,
                          gender_policy=pb.GENDER_POLICY_ANY,
                          beds=[pb.BedSpec(bed_id=b, label=f"{b[-3:]}床") for b in spare_ids[4 * k:4 * k + 4]])
              for k in range((spare + 3) // 4)]
    async with pool.acquire() as conn:
        async with conn.transaction():
            await repo.lock_hospital(conn, hospital)
            for k in range(0, len(sessions), 2000):
                await resources.publish_sessions(conn, pb.PublishSessionsRequest(
                    hospital_id=hospital, sessions=sessions[k:k + 2000]), today)
            await resources.upsert_beds(conn, pb.UpsertBedsRequest(hospital_id=hospital, wards=[pb.Ward(
                ward_id=f"{hospital}-W1", department="cardiology", name="心内科一病区",
                place=events_pb2.Place(building="住院楼", floor="5层"), rooms=rooms)]), today)
        # The spare beds are out of use while the admissions are booked, so all land on B0.
        await _set_beds(conn, sched, hospital, spare_ids, BedStatus.BLOCKED)
        for i in range(n):
            async with conn.transaction():
                outcome = await allocate(conn, sched, _admission(hospital, today + timedelta(days=1 + i)))
            if outcome.waitlisted:
                raise RuntimeError(f"admission {i + 1} of {n} not booked: {outcome.reason}")
        await _set_beds(conn, sched, hospital, spare_ids, BedStatus.FREE)
    return hospital


async def _one_by_one(conn, sched: Scheduler, displaced: list) -> set[str]:
    return {b["booking_id"] for b in displaced if await bookings.displace_one(conn, sched, b)}


@contextlib.contextmanager
def _displacing(way: str):
    if way == "joint":
        yield
        return
    joint = bookings.displace
    bookings.displace = _one_by_one
    try:
        yield
    finally:
        bookings.displace = joint


async def _block_b0(pool: asyncpg.Pool, sched: _CountingScheduler, hospital: str, way: str) -> dict:
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            sched.runs = 0
            with _displacing(way):
                started = time.perf_counter()
                await bedboard.update_status(conn, sched, f"{hospital}-B0", hospital, BedStatus.BLOCKED, None)
                seconds = time.perf_counter() - started
            states = await conn.fetch("SELECT state, count(*) AS n FROM bookings WHERE hospital_id = $1 GROUP BY 1",
                                      hospital)
        finally:
            await tx.rollback()
    counts = {r["state"]: r["n"] for r in states}
    return {"seconds": seconds, "engine_runs": sched.runs, "cancelled": counts.get("CANCELLED", 0),
            "moved": counts.get("TENTATIVE", 0) + counts.get("CONFIRMED", 0)}


async def measure(dsn: str, cfg: BedBoardConfig, echo: Callable[[str], None] = print) -> list[dict]:
    await db.migrate(dsn, SCHEMA, "scheduling")
    pool = await db.create_pool(dsn, SCHEMA, max_size=4, command_timeout=120.0)
    sched = _CountingScheduler(SchedulerSettings(time_limit_seconds=cfg.time_limit))
    rows, out = [], []
    try:
        for departments in cfg.departments:
            for n in cfg.sizes:
                hospital = await _hospital(pool, sched, departments, cfg.spare_beds, n)
                slots = await pool.fetchval("SELECT count(*) FROM slots WHERE hospital_id = $1", hospital)
                runs = {way: [await _block_b0(pool, sched, hospital, way) for _ in range(cfg.repeats)]
                        for way in ("joint", "one_by_one")}
                row = {"departments": departments, "outpatient_slots": slots, "beds": cfg.spare_beds + 1,
                       "admissions_on_bed": n}
                for way, results in runs.items():
                    row[way] = {"seconds": statistics.median(r["seconds"] for r in results),
                                **{k: results[-1][k] for k in ("engine_runs", "moved", "cancelled")}}
                out.append(row)
                j, o = row["joint"], row["one_by_one"]
                rows.append([str(departments), f"{slots:,}", str(n), f"{j['seconds']:.2f}", str(j["engine_runs"]),
                             f"{j['moved']}/{j['cancelled']}", f"{o['seconds']:.2f}", str(o["engine_runs"]),
                             f"{o['moved']}/{o['cancelled']}"])
    finally:
        await pool.close()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        finally:
            await conn.close()
    echo(_table(
        f"Bed board: blocking a bed with N admissions (+consultation) on it, {cfg.spare_beds} other beds free; "
        f"median of {cfg.repeats} run(s), seconds inside the call's transaction",
        ["departments", "outpatient slots", "N", "joint s", "runs", "moved/waitlisted",
         "one-by-one s", "runs", "moved/waitlisted"], rows))
    return out


async def run(cfg: BedBoardConfig, echo: Callable[[str], None] = print) -> list[dict]:
    logs.configure("WARNING")  # the service layer's INFO lines would bury the table
    dsn = os.environ.get("DATABASE_URL")
    if dsn:
        return await measure(dsn, cfg, echo)
    from services.common.localstack import LocalPostgres

    folder = Path(tempfile.mkdtemp(prefix="bench-bedboard-"))
    pg = await asyncio.to_thread(LocalPostgres(folder / "postgres").start)
    try:
        return await measure(pg.url, cfg, echo)
    finally:
        await asyncio.to_thread(pg.stop)
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scheduler.bedboard")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    asyncio.run(run(BedBoardConfig.quick() if args.quick else BedBoardConfig.full()))


if __name__ == "__main__":
    main()
