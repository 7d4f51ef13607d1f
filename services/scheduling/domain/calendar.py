"""Calendar arithmetic of the planning horizon: local dates, day indices, minutes.

The engine speaks day indices (0 = today) and minutes after midnight; the hospitals
speak local dates and "HH:MM". China has one time zone and no daylight saving, so a
fixed +08:00 offset is exact and needs no tz database.
"""
from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone

LOCAL = timezone(timedelta(hours=8), "Asia/Shanghai")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_hhmm(text: str) -> int | None:
    """Minutes after midnight of "HH:MM", or None when malformed."""
    m = _HHMM.match(text or "")
    return int(m.group(1)) * 60 + int(m.group(2)) if m else None


def hhmm(minute: int) -> str:
    """"HH:MM" of minutes after midnight: parse_hhmm's inverse."""
    return f"{minute // 60:02d}:{minute % 60:02d}"


def local_date(moment: datetime) -> date:
    return moment.astimezone(LOCAL).date()


def at(day: date, minute: int) -> datetime:
    return datetime.combine(day, time(0, 0), LOCAL) + timedelta(minutes=minute)


def minute_of(moment: datetime) -> int:
    local = moment.astimezone(LOCAL)
    return local.hour * 60 + local.minute


def day_index(today: date, day: date) -> int:
    return (day - today).days


def day_at(today: date, index: int) -> date:
    return today + timedelta(days=index)


def zh_date(day: date) -> str:
    """A date as clinics and patients read it: "11月27日"."""
    return f"{day.month}月{day.day}日"


def cut(start_minute: int, end_minute: int, length: int) -> list[int]:
    """Start minutes of the whole slots of `length` between start and end."""
    if length <= 0 or end_minute <= start_minute:
        return []
    return list(range(start_minute, end_minute - length + 1, length))
