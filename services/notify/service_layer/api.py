"""Use cases behind the gRPC API: preferences, listings, staff notes, statistics."""
from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from services.common import audit, membership
from services.common.auth import Caller, Role
from services.common.errors import NotFound, Violations
from services.common.pii import PiiCipher, mask_mobile
from services.notify.adapters import repository as repo
from services.notify.domain.model import MOBILE_CONTEXT, SHANGHAI, Channel, PlannedMessage
from services.notify.service_layer.notifications import NotifyConfig, derived_id, record_messages

_OPENID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_MOBILE = re.compile(r"^1[3-9]\d{9}$")
_LINK = re.compile(r"(https?://|www\.|\.(com|cn|net|org)\b)", re.I)
# A note must not carry a phone or ID number (full-width forms are folded first): seven digits
# or more in a row, or such a number in the groups people write it in, read through the
# spaces, dashes, dots and brackets between them. Dates and times are digits in groups too
# (2025.12.15, 10.30-11.30) and pass: their groups after the year have one or two digits.
_RUN = re.compile(r"\d{7,}")
_SEP = r"[\s\-‐‑‒–—―−﹣.·・•()]"
_GROUPED = re.compile(rf"\d+[Xx]?(?:{_SEP}+\d+[Xx]?)+")
_GROUP = re.compile(r"\d+[Xx]?")
_MOBILE_DIGITS = re.compile(r"1[3-9]\d{9}")
_AREA_CODE = re.compile(r"0\d{2,3}")
_LANDLINE_DIGITS = re.compile(r"0\d{9,11}")  # area code and 7-8 digits
_ID_DIGITS = re.compile(r"\d{15}|\d{17}[\dXx]")
NOTE_MAX = 20
STAFF_MESSAGE = "staff_message"


def _carries_number(text: str) -> bool:
    text = unicodedata.normalize("NFKC", text)
    if _RUN.search(text):
        return True
    for grouped in _GROUPED.finditer(text):
        groups = _GROUP.findall(grouped.group())
        for i, first in enumerate(groups):
            digits, long_groups = first, len(first) >= 3
            for group in groups[i + 1:]:
                digits += group
                long_groups = long_groups and len(group) >= 3
                # A number starts with a group of its own (a mobile's prefix, an area code, an
                # ID's six-digit region); a date's or a time's later groups are one or two digits.
                if ((len(first) >= 3 and _MOBILE_DIGITS.fullmatch(digits))
                        or (_AREA_CODE.fullmatch(first) and _LANDLINE_DIGITS.fullmatch(digits))
                        or (len(first) >= 6 and _ID_DIGITS.fullmatch(digits))):
                    return True
                # Part of one, in groups of three or four ("2201 0219 8001"): still not for a note.
                if long_groups and len(digits.rstrip("Xx")) >= 7:
                    return True
    return False


def _party(caller: Caller, route: asyncpg.Record) -> bool:
    if caller.role is Role.SERVICE:
        return True
    ours = {route["hospital_id"], route["clinic_id"], route["sender_id"], route["receiver_id"]}
    return caller.institution_id in ours


async def visible_route(conn: asyncpg.Connection, referral_id: str, caller: Caller) -> asyncpg.Record:
    route = await repo.get_route(conn, referral_id)
    # An invisible referral looks exactly like a missing one.
    if route is None or not _party(caller, route):
        raise NotFound(f"referral {referral_id} not found", reason="REFERRAL_NOT_FOUND")
    return route


@dataclass
class PreferencesInput:
    referral_id: str
    patient_id: str
    channels: list[Channel]
    wechat_openid: str
    consent: bool
    opt_out_non_essential: bool
    urgent_ignores_quiet_hours: bool
    mobile: str


async def set_preferences(pool: asyncpg.Pool, pii: PiiCipher, caller: Caller, p: PreferencesInput,
                          raw_channels: list[int]) -> asyncpg.Record:
    caller.require(Role.CLINIC_DOCTOR, Role.REFERRAL_DESK)
    v = Violations()
    v.check(bool(p.referral_id), "referral_id", "is required")
    v.check(bool(p.patient_id), "preferences.patient_id", "is required")
    v.check(0 not in raw_channels, "preferences.channels", "CHANNEL_UNSPECIFIED is not a channel")
    v.check(len(set(raw_channels)) == len(raw_channels), "preferences.channels", "lists a channel twice")
    v.check(not p.wechat_openid or bool(_OPENID.match(p.wechat_openid)), "preferences.wechat_openid",
            "must be 16-64 letters, digits, '-' or '_'")
    v.check(not (Channel.WECHAT in p.channels and not p.wechat_openid), "preferences.wechat_openid",
            "is required when WeChat is a chosen channel")
    # The description never repeats the number.
    v.check(not p.mobile or bool(_MOBILE.match(p.mobile)), "mobile", "must be an 11-digit mainland mobile number")
    v.raise_if_any()
    async with pool.acquire() as conn, conn.transaction():
        route = await visible_route(conn, p.referral_id, caller)
        if route["patient_id"] != p.patient_id:
            v.add("preferences.patient_id", "is not the patient of this referral")
            v.raise_if_any()
        mobile = None
        if p.mobile:
            mobile = (pii.encrypt(p.mobile, context=MOBILE_CONTEXT), pii.lookup_hash(p.mobile), mask_mobile(p.mobile))
        saved = await repo.save_preferences(
            conn, p.patient_id, channels=p.channels, wechat_openid=p.wechat_openid, consent=p.consent,
            opt_out_non_essential=p.opt_out_non_essential, urgent_ignores_quiet_hours=p.urgent_ignores_quiet_hours,
            set_by=f"{caller.institution_id}/{caller.subject}", mobile=mobile)
        await audit.record(conn, caller, "SetContactPreferences", f"contacts/{p.patient_id}", p.patient_id)
        return saved


async def _deliveries(conn, ids: list[uuid.UUID]) -> dict[uuid.UUID, list[asyncpg.Record]]:
    out: dict[uuid.UUID, list[asyncpg.Record]] = {i: [] for i in ids}
    for row in await conn.fetch("SELECT * FROM deliveries WHERE notification_id = ANY($1::uuid[]) "
                                "ORDER BY created_at, id", ids):
        out[row["notification_id"]].append(row)
    return out


async def list_notifications(pool: asyncpg.Pool, caller: Caller, *, referral_id: str, patient_id: str,
                             page_size: int, page_token: str) -> tuple[list, str]:
    caller.require(Role.CLINIC_DOCTOR, Role.REFERRAL_DESK, Role.SERVICE)
    v = Violations()
    v.check(bool(referral_id) != bool(patient_id), "referral_id", "give exactly one of referral_id and patient_id")
    v.check(0 <= page_size <= 200, "page_size", "must be between 0 and 200")
    offset = 0
    if page_token:
        v.check(page_token.isdigit(), "page_token", "is not a token this method returned")
        offset = int(page_token) if page_token.isdigit() else 0
    v.raise_if_any()
    size = page_size or 50
    async with pool.acquire() as conn:
        if referral_id:
            await visible_route(conn, referral_id, caller)
            rows = await conn.fetch("SELECT * FROM notifications WHERE referral_id = $1 "
                                    "ORDER BY created_at DESC, id LIMIT $2 OFFSET $3", referral_id, size + 1, offset)
        else:
            everyone = caller.role is Role.SERVICE
            rows = await conn.fetch(
                """SELECT n.* FROM notifications n JOIN referral_routes r ON r.referral_id = n.referral_id
                   WHERE n.recipient = $1 AND ($2 OR $3 IN (r.hospital_id, r.clinic_id, r.sender_id, r.receiver_id))
                   ORDER BY n.created_at DESC, n.id LIMIT $4 OFFSET $5""",
                patient_id, everyone, caller.institution_id, size + 1, offset)
        page = rows[:size]
        deliveries = await _deliveries(conn, [r["id"] for r in page])
        await audit.record_many(conn, caller, "ListNotifications",
                                [(f"notifications/{r['id']}", r["recipient"]) for r in page])
    token = str(offset + size) if len(rows) > size else ""
    return [(r, deliveries[r["id"]]) for r in page], token


async def get_notification(pool: asyncpg.Pool, caller: Caller, notification_id: str, *, audited: bool = True):
    caller.require(Role.CLINIC_DOCTOR, Role.REFERRAL_DESK, Role.SERVICE)
    try:
        key = uuid.UUID(notification_id)
    except ValueError:
        raise NotFound(f"notification {notification_id} not found", reason="NOTIFICATION_NOT_FOUND") from None
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM notifications WHERE id = $1", key)
        route = await repo.get_route(conn, row["referral_id"]) if row else None
        if row is None or route is None or not _party(caller, route):
            raise NotFound(f"notification {notification_id} not found", reason="NOTIFICATION_NOT_FOUND")
        if audited:
            await audit.record(conn, caller, "GetNotification", f"notifications/{key}", row["recipient"])
        return row, (await _deliveries(conn, [key]))[key]


def check_note(v: Violations, note: str) -> None:
    text = note.strip()
    if not v.check(bool(text), "note", "is required"):
        return
    v.check(len(text) <= NOTE_MAX, "note", f"at most {NOTE_MAX} characters (the approved template's limit)")
    v.check(text.isprintable(), "note", "must be one line without control characters")
    v.check(not _LINK.search(text), "note", "must not contain a link (vendors refuse them)")
    v.check(not _carries_number(text), "note", "must not contain phone or ID numbers")


async def send_staff_message(pool: asyncpg.Pool, cfg: NotifyConfig, caller: Caller, *, referral_id: str,
                             note: str, urgent: bool, request_id: str):
    caller.require(Role.REFERRAL_DESK)
    v = Violations()
    v.check(bool(referral_id), "referral_id", "is required")
    check_note(v, note)
    v.check(len(request_id) <= 128, "request_id", "at most 128 characters")
    v.raise_if_any()
    event_id = derived_id(f"{caller.institution_id}:{request_id or uuid.uuid4().hex}", "staff")
    async with pool.acquire() as conn, conn.transaction():
        row = await visible_route(conn, referral_id, caller)
        route = repo.route_from(row)
        contact = repo.contact_from(await repo.contact_row(conn, route.patient_id), route.patient_id)
        message = PlannedMessage(STAFF_MESSAGE, {"referral_id": referral_id, "note": note.strip()}, urgent=urgent)
        # A note the SMS vendor's variable cannot hold goes whole in an instructions message too.
        await record_messages(conn, cfg, event_id=event_id, route=route, contact=contact, messages=[message],
                              now=cfg.clock())
        notification_id = await repo.notification_id_for(conn, event_id, route.patient_id, STAFF_MESSAGE, "")
        await audit.record(conn, caller, "SendStaffMessage", f"notifications/{notification_id}", route.patient_id)
    # The reply reads back what this call wrote: its audit row above covers it.
    return await get_notification(pool, caller, str(notification_id), audited=False)


async def delivery_stats(pool: asyncpg.Pool, caller: Caller, *, hospital_id: str, start: datetime | None,
                         end: datetime | None, now: datetime) -> tuple[list[asyncpg.Record], int, int]:
    caller.require(Role.CONSORTIUM_OFFICE)
    v = Violations()
    v.check((start is None) == (end is None), "start_date", "give both start_date and end_date, or neither")
    if start and end:
        v.check(start <= end, "end_date", "must not be before start_date")
        v.check(end - start <= timedelta(days=366), "end_date", "a range of at most one year")
    v.raise_if_any()
    if start is None:
        today = now.astimezone(SHANGHAI).replace(hour=0, minute=0, second=0, microsecond=0)
        start, end = today - timedelta(days=6), today
    until = end + timedelta(days=1)
    async with pool.acquire() as conn:
        # An office sees its own consortium's hospitals only (membership from the referral
        # service's events); another consortium's hospital does not exist for it.
        consortium = membership.office_consortium(caller)
        if hospital_id:
            if not await membership.may_read_hospital(conn, caller, hospital_id):
                raise NotFound(f"hospital {hospital_id} not found", reason="HOSPITAL_NOT_FOUND")
            hospitals = [hospital_id]
        else:
            hospitals = await membership.members_of(conn, consortium)
        channels = await conn.fetch(
            """SELECT d.channel, d.vendor, d.status, count(*) AS n FROM deliveries d
               JOIN notifications n ON n.id = d.notification_id
               WHERE n.created_at >= $1 AND n.created_at < $2 AND n.hospital_id = ANY($3::text[])
               GROUP BY d.channel, d.vendor, d.status ORDER BY d.channel, d.vendor""", start, until, hospitals)
        totals = await conn.fetchrow(
            """SELECT count(*) AS total, count(*) FILTER (WHERE skip_reason IS NOT NULL) AS skipped
               FROM notifications WHERE created_at >= $1 AND created_at < $2 AND hospital_id = ANY($3::text[])""",
            start, until, hospitals)
    return list(channels), totals["total"], totals["skipped"]
