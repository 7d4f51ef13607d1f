"""One device, one channel at a time (pure): which windows clash and which one is named."""
from datetime import date

from services.scheduling.domain import calendar
from services.scheduling.domain.devices import Window, device_clashes

DAY = date(2026, 11, 27)


def _w(channel: str, start: str, end: str, rank: int = -1, device: str = "CT-64排", day: date = DAY) -> Window:
    return Window(channel, device, day, calendar.parse_hhmm(start), calendar.parse_hhmm(end), rank, f"f{rank}")


def test_windows_hold_the_device_from_start_up_to_end():
    morning = _w("CT1", "08:00", "12:00")
    assert device_clashes([morning, _w("CT2", "12:00", "17:00", 0)]) == []
    afternoon = _w("CT2", "11:59", "17:00", 0)
    assert device_clashes([morning, afternoon]) == [(afternoon, morning)]
    inside = _w("CT2", "09:00", "10:00", 0)
    assert device_clashes([morning, inside]) == [(inside, morning)]


def test_the_window_the_request_set_last_is_named():
    first, second = _w("CT1", "08:00", "12:00", 1), _w("CT2", "07:00", "09:00", 2)
    assert device_clashes([second, first]) == [(second, first)]
    stored, moved = _w("CT1", "10:00", "11:00"), _w("CT2", "08:00", "12:00", 0)
    assert device_clashes([stored, moved]) == [(moved, stored)]


def test_no_clash_without_a_shared_device_day_or_time_or_a_window_the_request_sets():
    assert device_clashes([_w("CT1", "08:00", "12:00"), _w("CT2", "09:00", "10:00")]) == []
    assert device_clashes([_w("CT1", "08:00", "12:00", device=""), _w("CT2", "08:00", "12:00", 0, device="")]) == []
    assert device_clashes([_w("CT1", "08:00", "12:00", device="CT-16排"), _w("CT2", "08:00", "12:00", 0)]) == []
    assert device_clashes([_w("CT1", "08:00", "12:00", day=date(2026, 11, 28)), _w("CT2", "08:00", "12:00", 0)]) == []
    # A window without length (no places on that day) holds nothing.
    assert device_clashes([_w("CT1", "08:00", "12:00"), _w("CT2", "11:00", "10:00", 0)]) == []


def test_hhmm_is_parse_hhmms_inverse():
    assert [calendar.hhmm(calendar.parse_hhmm(t)) for t in ("00:00", "08:05", "23:59")] == ["00:00", "08:05", "23:59"]
