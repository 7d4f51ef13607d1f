"""Demo capacity for HOSP01 (示范县人民医院), loaded through the public API; idempotent.

`make run` calls `load_demo(address, token_for)` with token_for(institution_id, role)."""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import grpc

from common.v1 import types_pb2
from scheduling.v1 import events_pb2, scheduling_service_pb2 as pb
from scheduling.v1 import scheduling_service_pb2_grpc as pb_grpc
from services.common.auth import Role
from services.scheduling.domain import calendar

HOSPITAL = "HOSP01"
HOSPITAL_NAME = "示范县人民医院"
CLINICS = [f"CLINIC{i:02d}" for i in range(1, 13)]
DAYS = 14

# department, room, expert doctor, general doctor
DEPARTMENTS = [
    ("cardiology", "门诊楼2层 心内科", ("D-CARD-01", "李建国"), ("D-CARD-02", "周敏")),
    ("endocrinology", "门诊楼2层 内分泌科", ("D-ENDO-01", "陈慧"), ("D-ENDO-02", "孙磊")),
    ("neurology", "门诊楼3层 神经内科", ("D-NEUR-01", "赵立新"), ("D-NEUR-02", "钱芳")),
    ("orthopedics", "门诊楼1层 骨科", ("D-ORTH-01", "吴强"), ("D-ORTH-02", "郑伟")),
    ("respiratory", "门诊楼3层 呼吸内科", ("D-RESP-01", "王红"), ("D-RESP-02", "冯涛")),
]

CHANNELS = [
    pb.ExamChannel(channel_id="HOSP01-CT1", modality="CT", device_id="CT-64排", slot_minutes=15, fasting_hours=4,
                   contrast_agent=True, kidney_function_valid_days=30, contraindications=["妊娠", "碘造影剂过敏"],
                   place=events_pb2.Place(building="医技楼", floor="1层", room="CT室1")),
    pb.ExamChannel(channel_id="HOSP01-MRI1", modality="MRI", device_id="MRI-1.5T", slot_minutes=30,
                   contraindications=["心脏起搏器", "体内金属植入物"], preparation_note="请勿携带金属物品",
                   place=events_pb2.Place(building="医技楼", floor="1层", room="磁共振室")),
    pb.ExamChannel(channel_id="HOSP01-US1", modality="US", device_id="彩超-1", slot_minutes=15, fasting_hours=8,
                   place=events_pb2.Place(building="门诊楼", floor="4层", room="彩超室2")),
    pb.ExamChannel(channel_id="HOSP01-ENDO1", modality="ENDOSCOPY", device_id="胃肠镜-1", slot_minutes=30,
                   fasting_hours=8, preparation_days=1, preparation_note="检查前一天晚餐后按说明服用泻药",
                   place=events_pb2.Place(building="医技楼", floor="2层", room="内镜中心")),
]

WARDS = [
    ("HOSP01-W-CARD", "cardiology", "心内科病区", "5层", ["telemetry", "oxygen"], ["coronary", "heart_failure"]),
    ("HOSP01-W-RESP", "respiratory", "呼吸内科病区", "6层", ["oxygen"], ["copd", "pneumonia"]),
    ("HOSP01-W-ORTH", "orthopedics", "骨科病区", "7层", [], ["fracture", "joint"]),
]


def _date(d) -> types_pb2.Date:
    return types_pb2.Date(year=d.year, month=d.month, day=d.day)


# A hospital publishes capacity ahead; the demo starts at any hour, so it publishes no
# session or exam day that has already begun (the statistics would count its reserved
# places as wasted), and loading again later the same day changes nothing published.
def sessions(now: datetime) -> list[pb.OutpatientSession]:
    out = []
    today = calendar.local_date(now)
    for offset in range(DAYS):
        day = today + timedelta(days=offset)
        if day.weekday() == 6:
            continue  # no outpatient sessions on Sundays
        for dept, room, expert, general in DEPARTMENTS:
            building, place = room.split(" ")[0][:3], room
            for half, start, end in ((pb.HALF_DAY_AM, "08:00", "12:00"), (pb.HALF_DAY_PM, "14:00", "17:00")):
                if calendar.at(day, calendar.parse_hhmm(start)) <= now:
                    continue
                for (doctor_id, name), title, total in ((expert, pb.DOCTOR_TITLE_EXPERT, 12),
                                                         (general, pb.DOCTOR_TITLE_GENERAL, 30)):
                    out.append(pb.OutpatientSession(
                        session_id=f"HOSP01-{doctor_id}-{day:%Y%m%d}-{'AM' if half == pb.HALF_DAY_AM else 'PM'}",
                        department=dept, doctor_id=doctor_id, doctor_name=name, title=title, date=_date(day),
                        half_day=half, start_time=start, end_time=end, slot_minutes=30, total_places=total,
                        place=events_pb2.Place(building=building, floor=place[3:5], room=place.split(" ")[1]),
                        department_name=place.split(" ")[1]))  # each room is named after its department
    return out


def exam_capacity(now: datetime) -> list[pb.ExamDayCapacity]:
    per_day = {"CT": (8, 2), "MRI": (4, 1), "US": (10, 2), "ENDOSCOPY": (3, 1)}
    out = []
    today = calendar.local_date(now)
    for offset in range(DAYS):
        day = today + timedelta(days=offset)
        if calendar.at(day, 8 * 60) <= now:
            continue
        for c in CHANNELS:
            reserved, overflow = per_day[c.modality]
            out.append(pb.ExamDayCapacity(channel_id=c.channel_id, date=_date(day), start_time="08:00",
                                          end_time="17:00", reserved_places=reserved, overflow_places=overflow))
    return out


def wards() -> list[pb.Ward]:
    out = []
    for ward_id, dept, name, floor, equipment, specialisms in WARDS:
        rooms = []
        for n in range(1, 5):
            policy = pb.GENDER_POLICY_MALE if n == 1 else pb.GENDER_POLICY_FEMALE if n == 2 else \
                pb.GENDER_POLICY_SAME_GENDER
            rooms.append(pb.WardRoom(
                room_id=f"{ward_id}-{n:02d}", label=f"{floor[0]}{n:02d}", capacity=3 if n < 4 else 1,
                gender_policy=policy, equipment=equipment if n != 3 else [*equipment, "isolation"],
                beds=[pb.BedSpec(bed_id=f"{ward_id}-{n:02d}-{b}", label=f"{b}床", overflow=(n == 4))
                      for b in range(1, (3 if n < 4 else 1) + 1)]))
        out.append(pb.Ward(ward_id=ward_id, department=dept, name=name, specialisms=specialisms, rooms=rooms,
                           max_age=0 if dept != "orthopedics" else 90,
                           place=events_pb2.Place(building="住院楼", floor=floor)))
    return out


async def load_demo(address: str, token_for: Callable[[str, Role | str], str]) -> None:
    now = datetime.now(calendar.LOCAL)
    desk = (("authorization", f"Bearer {token_for(HOSPITAL, Role.REFERRAL_DESK)}"),)
    beds = (("authorization", f"Bearer {token_for(HOSPITAL, Role.BED_MANAGER)}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.SchedulingServiceStub(channel)
        # Reserved places go back 24 h before their session (the default, and what beds keep).
        for kind in (pb.RESOURCE_TYPE_OUTPATIENT, pb.RESOURCE_TYPE_EXAM):
            await stub.SetReservationPolicy(pb.SetReservationPolicyRequest(policy=pb.ReservationPolicy(
                hospital_id=HOSPITAL, resource_type=kind, reserved_share=0.3, expert_floor_share=0.3,
                release_hours=24, early_release_days=14,
                clinic_quotas=[pb.ClinicQuota(clinic_id=c, places=40) for c in CLINICS])), metadata=desk)
        all_sessions = sessions(now)
        for i in range(0, len(all_sessions), 200):
            await stub.PublishSessions(pb.PublishSessionsRequest(
                hospital_id=HOSPITAL, hospital_name=HOSPITAL_NAME, sessions=all_sessions[i:i + 200]), metadata=desk)
        await stub.PublishExamCapacity(pb.PublishExamCapacityRequest(
            hospital_id=HOSPITAL, hospital_name=HOSPITAL_NAME, channels=CHANNELS, capacity=exam_capacity(now)),
            metadata=desk)
        await stub.UpsertBeds(pb.UpsertBedsRequest(hospital_id=HOSPITAL, hospital_name=HOSPITAL_NAME, wards=wards()),
                              metadata=beds)
