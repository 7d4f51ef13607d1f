"""Publishing capacity: reservation policies, outpatient sessions, exam channels, beds.

Every publish is idempotent (same request, same rows) and validates the whole request
before writing anything. Capacity that already has bookings is never silently rewritten.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from referral.v1 import types_pb2 as rtypes
from scheduling.v1 import scheduling_service_pb2 as pb
from services.common.errors import FailedPrecondition, Violations
from services.scheduling.adapters import repository as repo
from services.scheduling.domain import beds, calendar, devices, preparation
from services.scheduling.domain.policy import (
    MIN_OUTPATIENT_SHARE, URGENT_WINDOW_HOURS, ReservationPolicy, default_policy, distribute, spread)

ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
RESOURCE = {pb.RESOURCE_TYPE_OUTPATIENT: "outpatient", pb.RESOURCE_TYPE_EXAM: "exam", pb.RESOURCE_TYPE_BED: "bed"}
TITLE = {pb.DOCTOR_TITLE_EXPERT: "EXPERT", pb.DOCTOR_TITLE_GENERAL: "GENERAL"}
HALF = {pb.HALF_DAY_AM: "AM", pb.HALF_DAY_PM: "PM"}
GENDER_POLICY = {pb.GENDER_POLICY_MALE: "MALE", pb.GENDER_POLICY_FEMALE: "FEMALE",
                 pb.GENDER_POLICY_SAME_GENDER: "SAME_GENDER", pb.GENDER_POLICY_ANY: "ANY"}


def check_id(v: Violations, value: str, path: str) -> bool:
    return v.check(bool(ID.match(value)), path, "必填，1-64位字母、数字或 _ . : -")


def check_date(v: Violations, d, path: str) -> date | None:
    try:
        return date(d.year, d.month, d.day)
    except (ValueError, TypeError):
        v.add(path, "日期无效")
        return None


# --------------------------------------------------------------------------- policy


def policy_from_row(row, hospital_id: str, resource_type: str) -> ReservationPolicy:
    if row is None:
        return default_policy(hospital_id, resource_type)
    quotas = row["clinic_quotas"]
    quotas = json.loads(quotas) if isinstance(quotas, str) else dict(quotas or {})
    return ReservationPolicy(hospital_id, resource_type, float(row["reserved_share"]),
                             float(row["expert_floor_share"]), row["release_hours"], row["early_release_days"],
                             {k: int(x) for k, x in quotas.items()}, row["public_release_days"])


async def get_policy(conn, hospital_id: str, resource_type: str) -> ReservationPolicy:
    row = await conn.fetchrow("SELECT * FROM reservation_policies WHERE hospital_id = $1 AND resource_type = $2",
                              hospital_id, resource_type)
    return policy_from_row(row, hospital_id, resource_type)


def validate_policy(p: pb.ReservationPolicy) -> None:
    v = Violations()
    check_id(v, p.hospital_id, "policy.hospital_id")
    kind = RESOURCE.get(p.resource_type)
    v.check(kind is not None, "policy.resource_type", "必须指定资源类型")
    if v.check(0 <= p.reserved_share <= 1, "policy.reserved_share", "须在0到1之间") and kind == "outpatient":
        v.check(p.reserved_share >= MIN_OUTPATIENT_SHARE, "policy.reserved_share",
                f"门诊号源预留比例不得低于{int(MIN_OUTPATIENT_SHARE * 100)}%")
    v.check(0 <= p.expert_floor_share <= 1, "policy.expert_floor_share", "须在0到1之间")
    v.check(0 <= p.release_hours < URGENT_WINDOW_HOURS, "policy.release_hours",
            f"须在0到{URGENT_WINDOW_HOURS - 1}小时之间：加急转诊须在{URGENT_WINDOW_HOURS}小时内安排，"
            f"提前{URGENT_WINDOW_HOURS}小时或更早释放的预留资源加急转诊一个也用不上")
    v.check(0 <= p.early_release_days <= 60, "policy.early_release_days", "须在0到60天之间")
    v.check(0 <= p.public_release_days <= 60, "policy.public_release_days", "须在0到60天之间")
    seen = set()
    for i, q in enumerate(p.clinic_quotas):
        check_id(v, q.clinic_id, f"policy.clinic_quotas[{i}].clinic_id")
        v.check(q.clinic_id not in seen, f"policy.clinic_quotas[{i}].clinic_id", "重复的机构")
        v.check(q.places > 0, f"policy.clinic_quotas[{i}].places", "须大于0")
        seen.add(q.clinic_id)
    v.raise_if_any()


async def set_policy(conn, p: pb.ReservationPolicy) -> None:
    await conn.execute("""
        INSERT INTO reservation_policies (hospital_id, resource_type, reserved_share, expert_floor_share,
                                          release_hours, early_release_days, clinic_quotas, quotas_hard,
                                          public_release_days)
        VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9)
        ON CONFLICT (hospital_id, resource_type) DO UPDATE SET reserved_share = EXCLUDED.reserved_share,
            expert_floor_share = EXCLUDED.expert_floor_share, release_hours = EXCLUDED.release_hours,
            early_release_days = EXCLUDED.early_release_days, clinic_quotas = EXCLUDED.clinic_quotas,
            quotas_hard = EXCLUDED.quotas_hard, public_release_days = EXCLUDED.public_release_days""",
                       p.hospital_id, RESOURCE[p.resource_type], p.reserved_share, p.expert_floor_share,
                       p.release_hours, p.early_release_days or 14,
                       json.dumps({q.clinic_id: q.places for q in p.clinic_quotas}), p.quotas_hard,
                       p.public_release_days)


# --------------------------------------------------------------------------- slots


async def _owned_elsewhere(conn, table: str, key: str, ids: list[str], hospital_id: str) -> set[str]:
    rows = await conn.fetch(f"SELECT {key} FROM {table} WHERE {key} = ANY($1::text[]) AND hospital_id <> $2",
                            ids, hospital_id)
    return {r[key] for r in rows}


async def _replace_slots(conn, hospital_id: str, resource_type: str, where: str, args: tuple,
                         desired: list[tuple[str, datetime, int, list[str]]], owner: dict) -> bool:
    """Makes the slots matched by `where` exactly `desired`; False when they already were."""
    rows = await conn.fetch(f"""
        SELECT s.slot_id, s.start_at, s.length_minutes, array_agg(p.pool ORDER BY p.place_no) AS pools
          FROM slots s JOIN slot_places p USING (slot_id) WHERE {where} GROUP BY s.slot_id""", *args)
    current = sorted((r["slot_id"], r["start_at"], r["length_minutes"], list(r["pools"])) for r in rows)
    if current == sorted(desired):
        return False
    booked = await conn.fetchval(f"SELECT count(*) FROM booking_items bi JOIN slots s USING (slot_id) WHERE {where}",
                                 *args)
    if booked:
        raise FailedPrecondition("该时段已有转诊预约，不能修改号源；请先改约或取消相关预约", reason="CAPACITY_BOOKED")
    await conn.execute(f"DELETE FROM slots s WHERE {where}", *args)
    await conn.executemany(
        "INSERT INTO slots (slot_id, hospital_id, resource_type, session_id, channel_id, start_at, length_minutes) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [(sid, hospital_id, resource_type, owner.get("session_id"), owner.get("channel_id"), start, length)
         for sid, start, length, _ in desired])
    await conn.executemany("INSERT INTO slot_places (slot_id, place_no, pool) VALUES ($1, $2, $3)",
                           [(sid, i + 1, pool) for sid, _, _, pools in desired for i, pool in enumerate(pools)])
    return True


@dataclass(frozen=True)
class _Told:
    """Something of booked capacity that a live booking relies on: the request field that
    sets it ("": the item's place in the request), its name in the refusal, and which
    changes still leave a booking what it relied on (None: none; given the old value, the
    new one and the booked patient)."""
    field: str
    text: str
    keeps: Callable[[Any, Any, beds.BookedPatient], bool] | None = None


@dataclass(frozen=True)
class _Bookable:
    """A kind of capacity: its key, the joins from one of its rows (x) to the booking
    items (bi) placed on it, and what a live booking on it relies on, by column."""
    key: str
    items: str
    told: dict[str, _Told]


# What a patient was told besides the time (where, whom, what) may not change under a live
# booking: they would go to the old place from their message while GetBooking shows the
# new one. Of a ward, room or bed also what the admission was placed for: the patient's sex
# and age, the equipment required, the reservation's pool. A change that every booked
# patient still fits (a room made single-sex for their own sex, equipment added or only
# preferred, a bed back in the reservation, age limits they are inside) takes nothing from
# them, so a bed manager reorganising a ward is refused only where it would strand someone.
# Only what lies from today ($2 in `items`) on relies on the capacity: a slot or a night
# before today is over, and a booking that is all behind us (its patient came or did not,
# and nobody recorded which) holds nothing back. A CT moved to another room months after
# its first referral is not refused for the visits it has already served.
_SLOT_ITEMS = ("JOIN slots s ON s.{key} = x.{key} AND (s.start_at AT TIME ZONE 'Asia/Shanghai')::date >= $2 "
               "JOIN booking_items bi USING (slot_id)")
_BED_ITEMS = "JOIN bed_nights n ON n.bed_id = {bed}.bed_id AND n.night >= $2 JOIN booking_items bi USING (item_id)"
_PLACE = {"building": _Told("place.building", "楼栋"), "floor": _Told("place.floor", "楼层")}
_BOOKABLE = {
    "sessions": _Bookable("session_id", _SLOT_ITEMS.format(key="session_id"), {
        "department": _Told("department", "科室"), "doctor_id": _Told("doctor_id", "医生"), **_PLACE,
        "room": _Told("place.room", "房间")}),
    "exam_channels": _Bookable("channel_id", _SLOT_ITEMS.format(key="channel_id"), {
        "modality": _Told("modality", "检查类型"), **_PLACE, "room": _Told("place.room", "房间")}),
    "wards": _Bookable("ward_id", "JOIN rooms r ON r.ward_id = x.ward_id JOIN beds b ON b.room_id = r.room_id "
                       + _BED_ITEMS.format(bed="b"), {
        "department": _Told("department", "科室"), "name": _Told("name", "病区名称"), **_PLACE,
        "min_age": _Told("min_age", "最小年龄", lambda old, new, p: beds.keeps_min_age(new, p)),
        "max_age": _Told("max_age", "最大年龄", lambda old, new, p: beds.keeps_max_age(new, p))}),
    "rooms": _Bookable("room_id", "JOIN beds b ON b.room_id = x.room_id " + _BED_ITEMS.format(bed="b"), {
        "ward_id": _Told("", "所在病区"), "label": _Told("label", "房间号"),
        "gender_policy": _Told("gender_policy", "性别安排", lambda old, new, p: beds.keeps_gender_policy(new, p)),
        "equipment": _Told("equipment", "设备", beds.keeps_equipment)}),
    "beds": _Bookable("bed_id", _BED_ITEMS.format(bed="x"), {
        "room_id": _Told("", "所在房间"), "label": _Told("label", "床号"),
        "pool": _Told("overflow", "预留/绿色通道床位池", lambda old, new, p: beds.keeps_pool(new, p))}),
}
_SEX = {rtypes.GENDER_MALE: "MALE", rtypes.GENDER_FEMALE: "FEMALE"}


def _booked_patient(snapshot: bytes, need_id: str) -> beds.BookedPatient:
    s = rtypes.ReferralSnapshot.FromString(snapshot)
    need = next((n.admission for n in s.needs if n.need_id == need_id and n.WhichOneof("kind") == "admission"), None)
    return beds.BookedPatient(_SEX.get(s.patient.gender), s.patient.age_years or None,
                              frozenset(need.required_equipment if need is not None else ()), s.green_channel)


async def _refuse_changes_once_booked(conn, changes: dict[str, dict[str, tuple[str, dict[str, Any]]]],
                                     today: date) -> None:
    """Refuses to change what live bookings rely on (changes: table -> id -> (request path,
    column -> new value)), naming each field and how many bookings rely on it. Unbooked
    capacity may change freely. `today`: the first day (hospital time) whose slots and
    nights count."""
    refused = []
    for table, wanted in changes.items():
        if not wanted:
            continue
        kind = _BOOKABLE[table]
        columns = list(next(iter(wanted.values()))[1])
        stored = {r["id"]: r for r in await conn.fetch(
            f"SELECT {kind.key} AS id, {', '.join(columns)} FROM {table} WHERE {kind.key} = ANY($1::text[])",
            list(wanted))}
        changed = {i: [c for c in columns if stored[i][c] != new[c]] for i, (_, new) in wanted.items() if i in stored}
        changed = {i: cs for i, cs in changed.items() if cs}
        if not changed:
            continue
        booked: dict[str, list[beds.BookedPatient]] = {}
        for r in await conn.fetch(f"""
                SELECT DISTINCT x.{kind.key} AS id, bk.booking_id, bi.need_id, ref.snapshot
                  FROM {table} x {kind.items} JOIN bookings bk USING (booking_id) JOIN referrals ref USING (referral_id)
                 WHERE x.{kind.key} = ANY($1::text[]) AND bk.state IN ('TENTATIVE', 'CONFIRMED')""",
                                  list(changed), today):
            booked.setdefault(r["id"], []).append(_booked_patient(r["snapshot"], r["need_id"]))
        for i, cs in changed.items():
            path, new = wanted[i]
            for c in cs:
                told = kind.told[c]
                n = sum(told.keeps is None or not told.keeps(stored[i][c], new[c], p) for p in booked.get(i, ()))
                if n:
                    refused.append(f"{path}{'.' if told.field else ''}{told.field}（{told.text}，{n}个有效预约）")
    if refused:
        raise FailedPrecondition(f"已有转诊预约，不能修改{'、'.join(refused)}；请先改约或取消相关预约",
                                 reason="CAPACITY_BOOKED")


def _session_slots(s: pb.OutpatientSession, day: date, reserved: int) -> list[tuple[str, datetime, int, list[str]]]:
    starts = calendar.cut(calendar.parse_hhmm(s.start_time), calendar.parse_hhmm(s.end_time), s.slot_minutes)
    res, over = distribute(reserved, len(starts)), distribute(s.overflow_places, len(starts))
    return [(f"{s.session_id}-{i:02d}", calendar.at(day, m), s.slot_minutes, ["reserved"] * res[i] + ["overflow"] * over[i])
            for i, m in enumerate(starts) if res[i] + over[i] > 0]


async def publish_sessions(conn, req: pb.PublishSessionsRequest, today: date) -> pb.PublishSessionsResponse:
    policy = await get_policy(conn, req.hospital_id, "outpatient")
    v = Violations()
    check_id(v, req.hospital_id, "hospital_id")
    v.check(len(req.sessions) > 0, "sessions", "至少一个出诊时段")
    v.check(len(req.sessions) <= 2000, "sessions", "一次最多2000个出诊时段")
    seen: set[str] = set()
    plans = []
    for i, s in enumerate(req.sessions):
        f = f"sessions[{i}]"
        if check_id(v, s.session_id, f"{f}.session_id"):
            v.check(s.session_id not in seen, f"{f}.session_id", "重复的出诊时段")
            seen.add(s.session_id)
        v.check(bool(s.department.strip()), f"{f}.department", "必填")
        v.check(len(s.department_name) <= 32, f"{f}.department_name", "最多32个字符")
        v.check(s.title in TITLE, f"{f}.title", "须为专家号或普通号")
        v.check(s.half_day in HALF, f"{f}.half_day", "须为上午或下午")
        day = check_date(v, s.date, f"{f}.date")
        start, end = calendar.parse_hhmm(s.start_time), calendar.parse_hhmm(s.end_time)
        v.check(start is not None, f"{f}.start_time", "格式须为HH:MM")
        v.check(end is not None, f"{f}.end_time", "格式须为HH:MM")
        ok_len = v.check(5 <= s.slot_minutes <= 240, f"{f}.slot_minutes", "须在5到240分钟之间")
        if start is not None and end is not None and ok_len:
            v.check(bool(calendar.cut(start, end, s.slot_minutes)), f"{f}.end_time", "结束时间须晚于开始时间至少一个时段")
        v.check(1 <= s.total_places <= 500, f"{f}.total_places", "须在1到500之间")
        v.check(0 <= s.overflow_places <= 100, f"{f}.overflow_places", "须在0到100之间")
        minimum = policy.minimum_reserved(s.total_places, s.title == pb.DOCTOR_TITLE_EXPERT)
        reserved = s.reserved_places or minimum
        if v.check(0 <= s.reserved_places <= s.total_places, f"{f}.reserved_places", "须在0到总号源数之间"):
            v.check(reserved >= minimum, f"{f}.reserved_places",
                    f"按医院预留政策至少须预留{minimum}个号源")
        plans.append((s, day, reserved))
    v.raise_if_any()
    taken = await _owned_elsewhere(conn, "sessions", "session_id", list(seen), req.hospital_id)
    for i, s in enumerate(req.sessions):
        if s.session_id in taken:
            v.add(f"sessions[{i}].session_id", "该编号已被其他医院使用")
    v.raise_if_any()
    await _refuse_changes_once_booked(conn, {"sessions": {
        s.session_id: (f"sessions[{i}]", {"department": s.department.strip(), "doctor_id": s.doctor_id,
                                          "building": s.place.building, "floor": s.place.floor, "room": s.place.room})
        for i, s in enumerate(req.sessions)}}, today)
    await repo.upsert_hospital(conn, req.hospital_id, req.hospital_name)
    slots = places = 0
    for s, day, reserved in plans:
        await conn.execute("""
            INSERT INTO sessions (session_id, hospital_id, department, doctor_id, doctor_name, title, day, half_day,
                                  total_places, reserved_places, overflow_places, building, floor, room,
                                  department_name)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
            ON CONFLICT (session_id) DO UPDATE SET department = EXCLUDED.department, doctor_id = EXCLUDED.doctor_id,
                department_name = EXCLUDED.department_name,
                doctor_name = EXCLUDED.doctor_name, title = EXCLUDED.title, day = EXCLUDED.day,
                half_day = EXCLUDED.half_day, total_places = EXCLUDED.total_places,
                reserved_places = EXCLUDED.reserved_places, overflow_places = EXCLUDED.overflow_places,
                building = EXCLUDED.building, floor = EXCLUDED.floor, room = EXCLUDED.room""",
                           s.session_id, req.hospital_id, s.department.strip(), s.doctor_id, s.doctor_name,
                           TITLE[s.title], day, HALF[s.half_day], s.total_places, reserved, s.overflow_places,
                           s.place.building, s.place.floor, s.place.room, s.department_name.strip())
        desired = _session_slots(s, day, reserved)
        await _replace_slots(conn, req.hospital_id, "outpatient", "s.session_id = $1", (s.session_id,), desired,
                             {"session_id": s.session_id})
        slots += len(desired)
        places += reserved
    return pb.PublishSessionsResponse(sessions=len(plans), slots=slots, reserved_places=places)


async def _refuse_device_clashes(conn, req: pb.PublishExamCapacityRequest, known: dict, days: list,
                                 today: date) -> None:
    """Refuses a publish after which one device would be in two channels at once: the
    request's windows replace their channels' stored ones of the same day, and a channel
    the request moves to another device takes its stored windows (from today on) along."""
    first = len(req.channels)  # capacity[i] comes after every channels[j] in the request
    device = {cid: r["device_id"] for cid, r in known.items()} | {c.channel_id: c.device_id for c in req.channels}
    moved = {c.channel_id: j for j, c in enumerate(req.channels)
             if c.device_id and (c.channel_id not in known or known[c.channel_id]["device_id"] != c.device_id)}
    rows = await conn.fetch("""
        SELECT w.channel_id, c.device_id, w.day, w.start_minute, w.end_minute
          FROM exam_windows w JOIN exam_channels c USING (channel_id)
         WHERE c.hospital_id = $1 AND (w.day = ANY($2::date[]) OR w.day IN (
               SELECT m.day FROM exam_windows m WHERE m.channel_id = ANY($3::text[]) AND m.day >= $4))""",
                            req.hospital_id, list({day for _, day, *_ in days}), list(moved), today)
    after: dict[tuple[str, date], devices.Window] = {}
    for r in rows:
        cid, day = r["channel_id"], r["day"]
        j = moved.get(cid, -1) if day >= today else -1
        after[(cid, day)] = devices.Window(cid, device.get(cid, r["device_id"]), day, r["start_minute"],
                                           r["end_minute"], j, f"channels[{j}].device_id" if j >= 0 else "")
    for i, (d, day, start, end, _) in enumerate(days):
        after[(d.channel_id, day)] = devices.Window(d.channel_id, device[d.channel_id], day, start, end, first + i,
                                                    f"capacity[{i}].start_time")
    v = Violations()
    for w, holder in devices.device_clashes(after.values()):
        v.add(w.field, f"设备{w.device_id}在{calendar.zh_date(w.day)}{calendar.hhmm(holder.start)}–"
                       f"{calendar.hhmm(holder.end)}已属于通道{holder.channel_id}")
    v.raise_if_any()


async def publish_exam_capacity(conn, req: pb.PublishExamCapacityRequest,
                                today: date) -> pb.PublishExamCapacityResponse:
    v = Violations()
    check_id(v, req.hospital_id, "hospital_id")
    v.check(len(req.channels) + len(req.capacity) > 0, "capacity", "至少一个检查通道或一天的容量")
    channels: dict[str, pb.ExamChannel] = {}
    for i, c in enumerate(req.channels):
        f = f"channels[{i}]"
        if check_id(v, c.channel_id, f"{f}.channel_id"):
            v.check(c.channel_id not in channels, f"{f}.channel_id", "重复的检查通道")
            channels[c.channel_id] = c
        v.check(bool(re.match(r"^[A-Z][A-Z0-9_]{0,31}$", c.modality)), f"{f}.modality", "须为大写代码，如 CT、MRI、US")
        v.check(5 <= c.slot_minutes <= 240, f"{f}.slot_minutes", "须在5到240分钟之间")
        v.check(0 <= c.fasting_hours <= 24, f"{f}.fasting_hours", "须在0到24之间")
        v.check(0 <= c.kidney_function_valid_days <= 365, f"{f}.kidney_function_valid_days", "须在0到365之间")
        v.check(0 <= c.preparation_days <= 14, f"{f}.preparation_days", "须在0到14之间")
        v.check(len(c.required_results) <= 10 and all(bool(ID.match(r)) for r in c.required_results),
                f"{f}.required_results", "最多10项，每项为代码，如 COAGULATION")
    known = {r["channel_id"]: r for r in await conn.fetch(
        "SELECT channel_id, hospital_id, slot_minutes, device_id FROM exam_channels "
        "WHERE channel_id = ANY($1::text[])",
        list({c.channel_id for c in req.capacity} | set(channels)))}
    for cid, row in known.items():
        if row["hospital_id"] != req.hospital_id:
            v.add("channels", f"检查通道 {cid} 已被其他医院使用")
    days = []
    seen_days = set()
    for i, d in enumerate(req.capacity):
        f = f"capacity[{i}]"
        length = channels[d.channel_id].slot_minutes if d.channel_id in channels else (
            known[d.channel_id]["slot_minutes"] if d.channel_id in known else None)
        v.check(length is not None, f"{f}.channel_id", "未知的检查通道")
        day = check_date(v, d.date, f"{f}.date")
        v.check((d.channel_id, day) not in seen_days, f"{f}.date", "同一通道同一天重复")
        seen_days.add((d.channel_id, day))
        start, end = calendar.parse_hhmm(d.start_time), calendar.parse_hhmm(d.end_time)
        v.check(start is not None, f"{f}.start_time", "格式须为HH:MM")
        v.check(end is not None, f"{f}.end_time", "格式须为HH:MM")
        n = len(calendar.cut(start, end, length)) if None not in (start, end, length) and length > 0 else 0
        v.check(d.reserved_places >= 0 and d.overflow_places >= 0, f"{f}.reserved_places", "不能为负数")
        v.check(d.reserved_places + d.overflow_places <= n, f"{f}.reserved_places",
                f"预留与绿色通道号源之和超过当天可用时段数（{n}）")
        days.append((d, day, start, end, length))
    v.raise_if_any()
    # Check then write is sound because the caller took the hospital's advisory lock
    # (repo.lock_hospital) before anything was read and holds it to commit. Device ids are
    # the hospital's own, so that lock covers every channel that could claim the device,
    # one a concurrent request is just creating included, which no row lock could (there
    # is no row to lock yet); a concurrent publish waits, then reads this one's windows.
    await _refuse_device_clashes(conn, req, known, days, today)
    await _refuse_changes_once_booked(conn, {"exam_channels": {
        c.channel_id: (f"channels[{i}]", {"modality": c.modality, "building": c.place.building,
                                          "floor": c.place.floor, "room": c.place.room})
        for i, c in enumerate(req.channels)}}, today)
    await repo.upsert_hospital(conn, req.hospital_id, req.hospital_name)
    for c in channels.values():
        text = preparation.exam_preparation(c.modality, c.fasting_hours, c.contrast_agent,
                                            c.kidney_function_valid_days, c.preparation_days, c.preparation_note)
        await conn.execute("""
            INSERT INTO exam_channels (channel_id, hospital_id, modality, device_id, building, floor, room, slot_minutes,
                                       preparation_days, preparation, contraindications, contrast_agent,
                                       required_results)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
            ON CONFLICT (channel_id) DO UPDATE SET modality = EXCLUDED.modality, device_id = EXCLUDED.device_id,
                building = EXCLUDED.building, floor = EXCLUDED.floor, room = EXCLUDED.room,
                slot_minutes = EXCLUDED.slot_minutes, preparation_days = EXCLUDED.preparation_days,
                preparation = EXCLUDED.preparation, contraindications = EXCLUDED.contraindications,
                contrast_agent = EXCLUDED.contrast_agent, required_results = EXCLUDED.required_results""",
                           c.channel_id, req.hospital_id, c.modality, c.device_id, c.place.building, c.place.floor,
                           c.place.room, c.slot_minutes, c.preparation_days, text, list(c.contraindications),
                           c.contrast_agent, [r.strip().upper() for r in c.required_results])
    slots = 0
    for d, day, start, end, length in days:
        starts = calendar.cut(start, end, length)
        reserved = set(spread(d.reserved_places, len(starts)))
        rest = [i for i in range(len(starts)) if i not in reserved]
        overflow = {rest[j] for j in spread(d.overflow_places, len(rest))}
        desired = [(f"{d.channel_id}-{day:%Y%m%d}-{i:03d}", calendar.at(day, m), length,
                    ["reserved" if i in reserved else "overflow"])
                   for i, m in enumerate(starts) if i in reserved or i in overflow]
        lo, hi = calendar.at(day, 0), calendar.at(day + timedelta(days=1), 0)
        await _replace_slots(conn, req.hospital_id, "exam", "s.channel_id = $1 AND s.start_at >= $2 AND s.start_at < $3",
                             (d.channel_id, lo, hi), desired, {"channel_id": d.channel_id})
        slots += len(desired)
    await conn.executemany("""
        INSERT INTO exam_windows (channel_id, day, start_minute, end_minute) VALUES ($1, $2, $3, $4)
        ON CONFLICT (channel_id, day) DO UPDATE SET start_minute = EXCLUDED.start_minute,
            end_minute = EXCLUDED.end_minute""", [(d.channel_id, day, start, end) for d, day, start, end, _ in days])
    return pb.PublishExamCapacityResponse(channels=len(channels), slots=slots)


# --------------------------------------------------------------------------- beds


async def upsert_beds(conn, req: pb.UpsertBedsRequest, today: date) -> pb.UpsertBedsResponse:
    v = Violations()
    check_id(v, req.hospital_id, "hospital_id")
    v.check(len(req.wards) > 0, "wards", "至少一个病区")
    # Each id and the field that names it, for an id another hospital already has.
    ward_ids: dict[str, str] = {}
    room_ids: dict[str, str] = {}
    bed_ids: dict[str, str] = {}
    for i, w in enumerate(req.wards):
        f = f"wards[{i}]"
        check_id(v, w.ward_id, f"{f}.ward_id")
        v.check(w.ward_id not in ward_ids, f"{f}.ward_id", "重复的病区")
        ward_ids.setdefault(w.ward_id, f"{f}.ward_id")
        v.check(bool(w.department.strip()), f"{f}.department", "必填")
        v.check(0 <= w.min_age <= 150 and 0 <= w.max_age <= 150, f"{f}.min_age", "年龄须在0到150之间")
        v.check(not (w.max_age and w.min_age > w.max_age), f"{f}.max_age", "不能小于最小年龄")
        for j, r in enumerate(w.rooms):
            g = f"{f}.rooms[{j}]"
            check_id(v, r.room_id, f"{g}.room_id")
            v.check(r.room_id not in room_ids, f"{g}.room_id", "重复的房间")
            room_ids.setdefault(r.room_id, f"{g}.room_id")
            v.check(1 <= r.capacity <= 20, f"{g}.capacity", "须在1到20之间")
            v.check(r.gender_policy in GENDER_POLICY, f"{g}.gender_policy", "须指定性别安排")
            v.check(len(r.beds) <= max(r.capacity, 1), f"{g}.beds", "床位数不能超过房间容量")
            for k, b in enumerate(r.beds):
                check_id(v, b.bed_id, f"{g}.beds[{k}].bed_id")
                v.check(b.bed_id not in bed_ids, f"{g}.beds[{k}].bed_id", "重复的床位")
                bed_ids.setdefault(b.bed_id, f"{g}.beds[{k}].bed_id")
    v.raise_if_any()
    # A room belongs to a hospital through its ward: the upsert below would move another
    # hospital's room (and its beds) into this hospital's ward.
    for table, key, ids in (("wards", "ward_id", ward_ids), ("rooms JOIN wards USING (ward_id)", "room_id", room_ids),
                            ("beds", "bed_id", bed_ids)):
        for other in sorted(await _owned_elsewhere(conn, table, key, list(ids), req.hospital_id)):
            v.add(ids[other], "该编号已被其他医院使用")
    v.raise_if_any()
    # The rows as written below, by table and id, with each one's place in the request.
    rows: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {"wards": {}, "rooms": {}, "beds": {}}
    for i, w in enumerate(req.wards):
        rows["wards"][w.ward_id] = (f"wards[{i}]", {
            "department": w.department.strip(), "name": w.name, "building": w.place.building,
            "floor": w.place.floor, "min_age": w.min_age or None, "max_age": w.max_age or None})
        for j, r in enumerate(w.rooms):
            rows["rooms"][r.room_id] = (f"wards[{i}].rooms[{j}]", {
                "ward_id": w.ward_id, "label": r.label or r.room_id, "gender_policy": GENDER_POLICY[r.gender_policy],
                "equipment": list(r.equipment)})
            for k, b in enumerate(r.beds):
                rows["beds"][b.bed_id] = (f"wards[{i}].rooms[{j}].beds[{k}]", {
                    "room_id": r.room_id, "label": b.label or b.bed_id,
                    "pool": "overflow" if b.overflow else "reserved"})
    await _refuse_changes_once_booked(conn, rows, today)
    await repo.upsert_hospital(conn, req.hospital_id, req.hospital_name)
    for w in req.wards:
        ward = rows["wards"][w.ward_id][1]
        await conn.execute("""
            INSERT INTO wards (ward_id, hospital_id, department, name, building, floor, min_age, max_age, specialisms)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
            ON CONFLICT (ward_id) DO UPDATE SET department = EXCLUDED.department, name = EXCLUDED.name,
                building = EXCLUDED.building, floor = EXCLUDED.floor, min_age = EXCLUDED.min_age,
                max_age = EXCLUDED.max_age, specialisms = EXCLUDED.specialisms""",
                           w.ward_id, req.hospital_id, ward["department"], ward["name"], ward["building"],
                           ward["floor"], ward["min_age"], ward["max_age"], list(w.specialisms))
        for r in w.rooms:
            room = rows["rooms"][r.room_id][1]
            await conn.execute("""
                INSERT INTO rooms (room_id, ward_id, label, capacity, gender_policy, equipment)
                VALUES ($1, $2, $3, $4, $5, $6)
                ON CONFLICT (room_id) DO UPDATE SET ward_id = EXCLUDED.ward_id, label = EXCLUDED.label,
                    capacity = EXCLUDED.capacity, gender_policy = EXCLUDED.gender_policy,
                    equipment = EXCLUDED.equipment""",
                               r.room_id, room["ward_id"], room["label"], r.capacity, room["gender_policy"],
                               room["equipment"])
    await conn.executemany("""
        INSERT INTO beds (bed_id, hospital_id, room_id, label, pool) VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (bed_id) DO UPDATE SET room_id = EXCLUDED.room_id, label = EXCLUDED.label,
            pool = EXCLUDED.pool""",
                           [(bed_id, req.hospital_id, bed["room_id"], bed["label"], bed["pool"])
                            for bed_id, (_, bed) in rows["beds"].items()])
    return pb.UpsertBedsResponse(wards=len(ward_ids), rooms=len(room_ids), beds=len(bed_ids))


