"""Booking rows as the protobuf that events and the API carry."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from google.protobuf import timestamp_pb2

from scheduling.v1 import events_pb2, scheduling_service_pb2 as pb
from services.scheduling.adapters import repository as repo
from services.scheduling.domain import calendar, preparation

_KIND = {"CONSULTATION": events_pb2.ITEM_KIND_CONSULTATION, "EXAM": events_pb2.ITEM_KIND_EXAM,
         "ADMISSION": events_pb2.ITEM_KIND_ADMISSION}
_STATE = {"TENTATIVE": pb.BOOKING_STATE_TENTATIVE, "CONFIRMED": pb.BOOKING_STATE_CONFIRMED,
          "CANCELLED": pb.BOOKING_STATE_CANCELLED, "ARRIVED": pb.BOOKING_STATE_ARRIVED,
          "NO_SHOW": pb.BOOKING_STATE_NO_SHOW}
# Admissions are expected in the morning of the first night; the bed is kept until evening.
ADMIT_MINUTE = 9 * 60
ADMIT_BY_MINUTE = 17 * 60
DISCHARGE_MINUTE = 11 * 60


def ts(moment: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(moment)
    return out


def booked_item(row) -> events_pb2.BookedItem:
    item = events_pb2.BookedItem(item_id=row["item_id"], need_id=row["need_id"], kind=_KIND[row["kind"]])
    if row["kind"] == "ADMISSION":
        first = row["first_night"]
        item.start_time.CopyFrom(ts(calendar.at(first, ADMIT_MINUTE)))
        item.end_time.CopyFrom(ts(calendar.at(first + timedelta(days=row["nights"]), DISCHARGE_MINUTE)))
        item.place.CopyFrom(events_pb2.Place(hospital_name=row["hospital_name"] or "", building=row["ward_building"],
                                             floor=row["ward_floor"], room=row["room_label"]))
        item.department = row["ward_department"]
        item.ward, item.bed, item.nights = row["ward_name"], row["bed_label"], row["nights"]
        item.preparation = preparation.admission_preparation()
        return item
    item.start_time.CopyFrom(ts(row["start_at"]))
    item.end_time.CopyFrom(ts(row["start_at"] + timedelta(minutes=row["length_minutes"])))
    item.place.CopyFrom(events_pb2.Place(hospital_name=row["hospital_name"] or "", building=row["building"] or "",
                                         floor=row["floor"] or "", room=row["room"] or ""))
    if row["kind"] == "EXAM":
        item.modality = row["modality"]
        item.preparation = "；".join(t for t in (row["preparation"], row["instruction"]) if t)
    else:
        item.department = row["session_department"]
        item.doctor_name = row["doctor_name"] or ""
        item.preparation = preparation.consultation_preparation()
    return item


def trips(items: list[events_pb2.BookedItem]) -> int:
    """Distinct local days the patient must come (an admission counts its first day)."""
    return len({calendar.local_date(it.start_time.ToDatetime(tzinfo=timezone.utc)) for it in items})


async def items_of(conn, booking_id: str) -> list[events_pb2.BookedItem]:
    return [booked_item(r) for r in await repo.items(conn, booking_id)]


def booking(row, items: list[events_pb2.BookedItem]) -> pb.Booking:
    out = pb.Booking(name=f"bookings/{row['booking_id']}", booking_id=row["booking_id"],
                     referral_id=row["referral_id"], hospital_id=row["hospital_id"],
                     sending_institution_id=row["sending_institution_id"], state=_STATE[row["state"]],
                     items=items, trips=trips(items))
    out.create_time.CopyFrom(ts(row["created_at"]))
    out.update_time.CopyFrom(ts(row["updated_at"]))
    return out


async def booking_view(conn, booking_id: str) -> pb.Booking:
    row = await repo.get_booking(conn, booking_id)
    return booking(row, await items_of(conn, booking_id))
