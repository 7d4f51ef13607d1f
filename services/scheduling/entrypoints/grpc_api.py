"""scheduling.v1.SchedulingService: scope checks, validation, one transaction per call."""
from __future__ import annotations

import re
from datetime import date, timedelta

import asyncpg
import grpc

from referral.v1 import types_pb2 as rtypes
from scheduling.v1 import scheduling_service_pb2 as pb
from scheduling.v1 import scheduling_service_pb2_grpc as pb_grpc
from services.common import audit, membership
from services.common.auth import Caller, Role, current_caller
from services.common.errors import FailedPrecondition, NotFound, Violations
from services.scheduling.adapters import repository as repo
from services.scheduling.domain import calendar
from services.scheduling.domain.beds import BedStatus
from services.scheduling.service_layer import bedboard, bookings, queries, rendering, resources
from services.scheduling.service_layer.allocation import Scheduler, allocate

_BOOKING_NAME = re.compile(r"^bookings/([0-9a-f]{32})$")
_BED_STATUS = {pb.BED_STATUS_FREE: BedStatus.FREE, pb.BED_STATUS_OCCUPIED: BedStatus.OCCUPIED,
               pb.BED_STATUS_CLEANING: BedStatus.CLEANING, pb.BED_STATUS_BLOCKED: BedStatus.BLOCKED}
_PATIENT_DATA_ANYWHERE = (Role.SERVICE,)


def hospital_scope(hospital_id: str, *roles: Role) -> Caller:
    """The caller may act on this hospital; a hospital outside its scope does not exist for it."""
    caller = current_caller()
    caller.require(*roles)
    if caller.role not in _PATIENT_DATA_ANYWHERE and caller.institution_id != hospital_id:
        raise NotFound(f"医院 {hospital_id} 不存在", reason="HOSPITAL_NOT_FOUND")
    return caller


async def aggregate_scope(pool: asyncpg.Pool, hospital_id: str, *roles: Role) -> Caller:
    """Aggregates without patients (availability, utilisation): also a consortium office
    for its consortium's hospitals and a clinic doctor for its own consortium's hospitals,
    by the membership the referral service publishes (services.common.membership)."""
    caller = current_caller()
    caller.require(*roles)
    async with pool.acquire() as conn:
        allowed = await membership.may_read_hospital(conn, caller, hospital_id)
    if not allowed:
        raise NotFound(f"医院 {hospital_id} 不存在", reason="HOSPITAL_NOT_FOUND")
    return caller


def bed_scope(*roles: Role) -> str | None:
    caller = current_caller()
    caller.require(*roles)
    return None if caller.role == Role.SERVICE else caller.institution_id


def booking_visible(caller: Caller, row) -> bool:
    if row is None:
        return False
    if caller.role in _PATIENT_DATA_ANYWHERE:
        return True
    if caller.role == Role.CLINIC_DOCTOR:
        return row["sending_institution_id"] == caller.institution_id
    return row["hospital_id"] == caller.institution_id


async def patients_of(conn, referral_ids: list[str]) -> dict[str, str]:
    """The patients (keyed hashes) of referrals, from the snapshots their events carried."""
    rows = await conn.fetch("SELECT referral_id, snapshot FROM referrals WHERE referral_id = ANY($1::text[])",
                            referral_ids)
    return {r["referral_id"]: rtypes.ReferralSnapshot.FromString(r["snapshot"]).patient.patient_id for r in rows}


async def audit_booking(conn, caller: Caller, booking_id: str, referral_id: str) -> None:
    patients = await patients_of(conn, [referral_id])
    await audit.record(conn, caller, audit.rpc_method(), f"bookings/{booking_id}", patients.get(referral_id))


def booking_id_of(name: str) -> str:
    m = _BOOKING_NAME.match(name)
    if not m:
        v = Violations()
        v.add("name", "格式须为 bookings/{booking_id}")
        v.raise_if_any()
    return m.group(1)


def date_range(v: Violations, req, today: date, default_days: int) -> tuple[date, date]:
    first = resources.check_date(v, req.from_date, "from_date") if req.HasField("from_date") else today
    last = resources.check_date(v, req.to_date, "to_date") if req.HasField("to_date") else \
        today + timedelta(days=default_days)
    if first and last:
        v.check(first <= last, "to_date", "不能早于开始日期")
        v.check((last - first).days <= 92, "to_date", "查询范围不超过92天")
    return first, last


def validate_snapshot(s: rtypes.ReferralSnapshot) -> None:
    v = Violations()
    resources.check_id(v, s.referral_id, "referral.referral_id")
    resources.check_id(v, s.hospital_id, "referral.hospital_id")
    resources.check_id(v, s.sending_institution_id, "referral.sending_institution_id")
    v.check(0 < len(s.needs) <= 20, "referral.needs", "须有1到20项需求")
    seen = set()
    for i, n in enumerate(s.needs):
        f = f"referral.needs[{i}]"
        if resources.check_id(v, n.need_id, f"{f}.need_id"):
            v.check(n.need_id not in seen and n.need_id not in ("consultation", "admission"),
                    f"{f}.need_id", "须在转诊内唯一")
            seen.add(n.need_id)
        kind = n.WhichOneof("kind")
        v.check(kind is not None, f, "须为门诊、检查或住院之一")
        if kind == "consultation":
            v.check(bool(n.consultation.department.strip()), f"{f}.consultation.department", "必填")
        elif kind == "exam":
            v.check(bool(n.exam.modality.strip()), f"{f}.exam.modality", "必填")
        elif kind == "admission":
            v.check(1 <= n.admission.expected_nights <= 60, f"{f}.admission.expected_nights", "须在1到60之间")
    for i, d in enumerate(s.available_dates):
        resources.check_date(v, d, f"referral.available_dates[{i}]")
    v.check(0 <= s.patient.age_years <= 150, "referral.patient.age_years", "须在0到150之间")
    v.raise_if_any()


class SchedulingServicer(pb_grpc.SchedulingServiceServicer):
    def __init__(self, pool: asyncpg.Pool, sched: Scheduler) -> None:
        self.pool = pool
        self.sched = sched

    # ----------------------------------------------------------------- capacity

    async def SetReservationPolicy(self, request, context):
        hospital_scope(request.policy.hospital_id, Role.REFERRAL_DESK, *_PATIENT_DATA_ANYWHERE)
        resources.validate_policy(request.policy)
        async with self.pool.acquire() as conn, conn.transaction():
            await resources.set_policy(conn, request.policy)
        return request.policy

    async def PublishSessions(self, request, context):
        hospital_scope(request.hospital_id, Role.REFERRAL_DESK, Role.SERVICE)
        async with self.pool.acquire() as conn, conn.transaction():
            await repo.lock_hospital(conn, request.hospital_id)
            return await resources.publish_sessions(conn, request, calendar.local_date(self.sched.clock()))

    async def PublishExamCapacity(self, request, context):
        hospital_scope(request.hospital_id, Role.REFERRAL_DESK, Role.SERVICE)
        async with self.pool.acquire() as conn, conn.transaction():
            await repo.lock_hospital(conn, request.hospital_id)
            return await resources.publish_exam_capacity(conn, request, calendar.local_date(self.sched.clock()))

    async def UpsertBeds(self, request, context):
        hospital_scope(request.hospital_id, Role.BED_MANAGER, Role.REFERRAL_DESK, Role.SERVICE)
        async with self.pool.acquire() as conn, conn.transaction():
            await repo.lock_hospital(conn, request.hospital_id)
            out = await resources.upsert_beds(conn, request, calendar.local_date(self.sched.clock()))
        self.sched.on_capacity_freed(request.hospital_id)
        return out

    async def ListAvailability(self, request, context):
        await aggregate_scope(self.pool, request.hospital_id, Role.CLINIC_DOCTOR, Role.REFERRAL_DESK,
                              Role.CONSORTIUM_OFFICE, Role.SERVICE)
        v = Violations()
        resources.check_id(v, request.hospital_id, "hospital_id")
        now = self.sched.clock()
        first, last = date_range(v, request, calendar.local_date(now), 14)
        v.raise_if_any()
        kind = resources.RESOURCE.get(request.resource_type)
        async with self.pool.acquire() as conn:
            return await queries.availability(conn, request.hospital_id, kind, request.department.strip(),
                                              request.modality.strip(), first, last, now)

    # ----------------------------------------------------------------- bookings

    async def AllocateReferral(self, request, context):
        hospital_scope(request.referral.hospital_id, Role.SERVICE, Role.REFERRAL_DESK)
        validate_snapshot(request.referral)
        caller = current_caller()
        async with self.pool.acquire() as conn, conn.transaction():
            outcome = await allocate(conn, self.sched, request.referral)
            await audit.record(conn, caller, "AllocateReferral", f"referrals/{request.referral.referral_id}",
                               request.referral.patient.patient_id or None)
            result = pb.AllocationResult(waitlisted=outcome.waitlisted, reason_code=outcome.reason_code,
                                         reason=outcome.reason)
            if outcome.booking_id:
                result.booking.CopyFrom(await rendering.booking_view(conn, outcome.booking_id))
        return result

    async def _visible_booking(self, conn, name: str, *, for_update: bool = False):
        booking_id = booking_id_of(name)
        row = await repo.get_booking(conn, booking_id, for_update=for_update)
        if not booking_visible(current_caller(), row):
            raise NotFound(f"预约 {name} 不存在", reason="BOOKING_NOT_FOUND")
        return row

    async def GetBooking(self, request, context):
        current_caller().require(*Role)
        async with self.pool.acquire() as conn:
            row = await self._visible_booking(conn, request.name)
            await audit_booking(conn, current_caller(), row["booking_id"], row["referral_id"])
            return await rendering.booking_view(conn, row["booking_id"])

    async def Reschedule(self, request, context):
        current_caller().require(Role.REFERRAL_DESK, Role.SERVICE)
        v = Violations()
        booking_id_of(request.name)
        for i, d in enumerate(request.available_dates):
            resources.check_date(v, d, f"available_dates[{i}]")
        v.check(len(request.reason) <= 200, "reason", "不超过200字")
        v.raise_if_any()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._visible_booking(conn, request.name, for_update=True)
            await bookings.reschedule(conn, self.sched, row, list(request.available_dates), request.reason)
            await audit_booking(conn, current_caller(), row["booking_id"], row["referral_id"])
            out = await rendering.booking_view(conn, row["booking_id"])
        self.sched.on_capacity_freed(row["hospital_id"])
        return out

    async def CancelBooking(self, request, context):
        current_caller().require(Role.REFERRAL_DESK, Role.CLINIC_DOCTOR, Role.SERVICE)
        booking_id_of(request.name)
        v = Violations()
        v.check(len(request.reason) <= 200, "reason", "不超过200字")
        v.raise_if_any()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._visible_booking(conn, request.name, for_update=True)
            if row["state"] in bookings.LIVE:
                await bookings.cancel(conn, row, request.reason or "预约已取消")
                await repo.set_referral_state(conn, row["referral_id"], "CANCELLED", "BOOKING_CANCELLED",
                                              request.reason)
            elif row["state"] != "CANCELLED":

                raise FailedPrecondition("已就诊或已爽约的预约不能取消", reason="BOOKING_NOT_LIVE")
            await audit_booking(conn, current_caller(), row["booking_id"], row["referral_id"])
            out = await rendering.booking_view(conn, row["booking_id"])
        self.sched.on_capacity_freed(row["hospital_id"])
        return out

    async def GetUtilization(self, request, context):
        await aggregate_scope(self.pool, request.hospital_id, Role.REFERRAL_DESK, Role.CONSORTIUM_OFFICE,
                              Role.SERVICE)
        v = Violations()
        resources.check_id(v, request.hospital_id, "hospital_id")
        now = self.sched.clock()
        today = calendar.local_date(now)
        if not request.HasField("from_date"):
            request.from_date.CopyFrom(queries.pb_date(today - timedelta(days=14)))
        first, last = date_range(v, request, today, 14)
        v.raise_if_any()
        async with self.pool.acquire() as conn:
            return await queries.utilization(conn, request.hospital_id, first, last, now)

    # ----------------------------------------------------------------- bed board

    async def GetBedBoard(self, request, context):
        # The board names the referrals holding beds: patient data, so no foreign office.
        caller = hospital_scope(request.hospital_id, Role.BED_MANAGER, Role.REFERRAL_DESK, *_PATIENT_DATA_ANYWHERE)
        async with self.pool.acquire() as conn:
            board = await queries.bed_board(conn, request.hospital_id, request.ward_id,
                                            calendar.local_date(self.sched.clock()))
            held = [b for b in board.beds if b.held_referral_id]
            patients = await patients_of(conn, [b.held_referral_id for b in held])
            await audit.record_many(conn, caller, "GetBedBoard", [
                (f"beds/{b.bed_id}", patients.get(b.held_referral_id)) for b in held])
            return board

    async def _bed_state(self, conn, hospital_id: str, bed_id: str) -> pb.BedState:
        board = await queries.bed_board(conn, hospital_id, "", calendar.local_date(self.sched.clock()), bed_id)
        return board.beds[0]

    async def _change_bed(self, bed_id: str, change) -> pb.BedState:
        """A bed board change may free capacity: re-optimisation looks at it after commit."""
        async with self.pool.acquire() as conn, conn.transaction():
            hospital = await change(conn)
            out = await self._bed_state(conn, hospital, bed_id)
        self.sched.on_capacity_freed(hospital)
        return out

    async def UpdateBedStatus(self, request, context):
        scope = bed_scope(Role.BED_MANAGER, Role.SERVICE)
        v = Violations()
        resources.check_id(v, request.bed_id, "bed_id")
        status = _BED_STATUS.get(request.status)
        v.check(status is not None, "status", "须为空床、在床、清洁中或停用（预留请用 HoldBed）")
        discharge = None
        if request.HasField("expected_discharge_date"):
            discharge = resources.check_date(v, request.expected_discharge_date, "expected_discharge_date")
        v.raise_if_any()
        return await self._change_bed(request.bed_id, lambda conn: bedboard.update_status(
            conn, self.sched, request.bed_id, scope, status, discharge))

    async def SetExpectedDischarge(self, request, context):
        scope = bed_scope(Role.BED_MANAGER, Role.SERVICE)
        v = Violations()
        resources.check_id(v, request.bed_id, "bed_id")
        v.check(request.HasField("expected_discharge_date"), "expected_discharge_date", "必填")
        day = resources.check_date(v, request.expected_discharge_date, "expected_discharge_date")
        v.raise_if_any()
        return await self._change_bed(request.bed_id, lambda conn: bedboard.set_expected_discharge(
            conn, self.sched, request.bed_id, scope, day))

    async def HoldBed(self, request, context):
        scope = bed_scope(Role.BED_MANAGER, Role.SERVICE)
        v = Violations()
        resources.check_id(v, request.bed_id, "bed_id")
        v.check(bool(re.match(r"^[0-9a-f]{32}$", request.booking_id)), "booking_id", "格式无效")
        v.raise_if_any()
        async with self.pool.acquire() as conn, conn.transaction():
            await bedboard.hold(conn, request.bed_id, scope, request.booking_id)
            row = await repo.get_booking(conn, request.booking_id)
            await audit_booking(conn, current_caller(), row["booking_id"], row["referral_id"])
            return await self._bed_state(conn, row["hospital_id"], request.bed_id)

    async def ReleaseBedHold(self, request, context):
        scope = bed_scope(Role.BED_MANAGER, Role.SERVICE)
        v = Violations()
        resources.check_id(v, request.bed_id, "bed_id")
        v.raise_if_any()
        caller = current_caller()

        async def release(conn) -> str:
            held = await repo.get_booking(conn, await conn.fetchval(
                "SELECT held_booking_id FROM beds WHERE bed_id = $1", request.bed_id) or "")
            hospital = await bedboard.release_hold(conn, request.bed_id, scope)
            if held is not None:
                await audit_booking(conn, caller, held["booking_id"], held["referral_id"])
            return hospital
        return await self._change_bed(request.bed_id, release)


def registrar(pool: asyncpg.Pool, sched: Scheduler):
    def register(server: grpc.aio.Server) -> list[str]:
        pb_grpc.add_SchedulingServiceServicer_to_server(SchedulingServicer(pool, sched), server)
        return [pb.DESCRIPTOR.services_by_name["SchedulingService"].full_name]
    return register
