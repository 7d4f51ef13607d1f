"""Pure rules of the scheduling service: policy, calendar, bed board, preparation."""
from datetime import date, datetime, timedelta

import pytest

from services.scheduling.domain import calendar, preparation
from services.scheduling.domain.beds import (
    BedStatus, BookedPatient, IllegalTransition, can_hold, first_bookable_night, keeps_equipment, keeps_gender_policy,
    keeps_max_age, keeps_min_age, keeps_pool, transition)
from services.scheduling.domain.policy import URGENT_WINDOW_HOURS, ReservationPolicy, distribute, spread


@pytest.mark.parametrize("total,expert,expected", [(20, False, 6), (10, False, 3), (1, False, 1), (7, True, 5)])
def test_minimum_reserved_uses_share_and_expert_floor(total, expert, expected):
    policy = ReservationPolicy("H", "outpatient", reserved_share=0.3, expert_floor_share=0.6)
    assert policy.minimum_reserved(total, expert) == expected


def test_release_deadline_is_hours_before_start():
    policy = ReservationPolicy("H", "outpatient", release_hours=24)
    start = calendar.at(date(2026, 12, 3), 8 * 60)
    assert policy.release_at(start) == start - timedelta(hours=24)
    assert not policy.is_due(start, start - timedelta(hours=25))
    assert policy.is_due(start, start - timedelta(hours=24))


@pytest.mark.parametrize("hour", range(0, 24, 3))
def test_by_default_an_urgent_referral_accepted_at_any_hour_finds_reserved_capacity_in_its_window(hour):
    accepted_day = date(2026, 12, 3)
    accepted = calendar.at(accepted_day, hour * 60)
    last_day = accepted_day + timedelta(days=URGENT_WINDOW_HOURS // 24)
    for kind in ("outpatient", "exam", "bed"):
        for minute in (9 * 60, 14 * 60):  # a bed-night (admission at 09:00), an afternoon session
            assert not ReservationPolicy("H", kind).is_due(calendar.at(last_day, minute), accepted)


def test_spread_and_distribute_cover_the_whole_day():
    assert spread(3, 12) == [0, 4, 8]
    assert spread(0, 5) == [] and spread(9, 3) == [0, 1, 2]
    assert distribute(10, 8) == [2, 1, 1, 1, 2, 1, 1, 1]
    assert sum(distribute(13, 5)) == 13


def test_calendar_cuts_sessions_and_maps_local_time():
    assert calendar.parse_hhmm("08:30") == 510 and calendar.parse_hhmm("8:30") is None
    assert calendar.parse_hhmm("24:00") is None
    assert calendar.cut(480, 720, 30) == list(range(480, 720, 30))
    assert calendar.cut(480, 500, 30) == []
    moment = calendar.at(date(2026, 12, 3), 23 * 60 + 30)
    assert calendar.local_date(moment.astimezone(calendar.LOCAL)) == date(2026, 12, 3)
    assert moment.utcoffset() == timedelta(hours=8) and calendar.minute_of(moment) == 1410


@pytest.mark.parametrize("current,target", [
    (BedStatus.FREE, BedStatus.OCCUPIED), (BedStatus.OCCUPIED, BedStatus.CLEANING),
    (BedStatus.CLEANING, BedStatus.FREE), (BedStatus.BLOCKED, BedStatus.FREE), (BedStatus.HELD, BedStatus.OCCUPIED),
    (BedStatus.FREE, BedStatus.FREE)])
def test_legal_bed_transitions(current, target):
    assert transition(current, target) == target


@pytest.mark.parametrize("current,target", [
    (BedStatus.HELD, BedStatus.CLEANING), (BedStatus.HELD, BedStatus.FREE), (BedStatus.CLEANING, BedStatus.OCCUPIED),
    (BedStatus.FREE, BedStatus.HELD), (BedStatus.HELD, BedStatus.HELD)])
def test_illegal_bed_transitions_explain_in_chinese(current, target):
    with pytest.raises(IllegalTransition, match="床位状态不能"):
        transition(current, target)


def test_bookable_nights_follow_the_board():
    today = date(2026, 12, 1)
    assert first_bookable_night(BedStatus.FREE, None, today) == today
    assert first_bookable_night(BedStatus.OCCUPIED, date(2026, 12, 4), today) == date(2026, 12, 4)
    assert first_bookable_night(BedStatus.OCCUPIED, date(2026, 11, 20), today) == today
    assert first_bookable_night(BedStatus.OCCUPIED, None, today) is None
    assert first_bookable_night(BedStatus.CLEANING, None, today) is None
    assert can_hold(BedStatus.FREE) and not can_hold(BedStatus.CLEANING)


_WOMAN = BookedPatient(gender="FEMALE", age=60, required_equipment=frozenset({"oxygen"}))


@pytest.mark.parametrize("new,patient,kept", [
    ("FEMALE", _WOMAN, True), ("MALE", _WOMAN, False), ("ANY", _WOMAN, False), ("SAME_GENDER", _WOMAN, False),
    ("FEMALE", BookedPatient(), False)])  # sex unknown: no single-sex room is known to fit
def test_a_booked_patient_keeps_a_room_made_single_sex_for_their_own_sex_only(new, patient, kept):
    assert keeps_gender_policy(new, patient) == kept


def test_a_booked_admission_relies_on_the_equipment_it_required_only():
    assert keeps_equipment(["oxygen", "isolation"], ["oxygen"], _WOMAN)
    assert keeps_equipment(["oxygen"], ["oxygen", "telemetry"], _WOMAN)
    assert not keeps_equipment(["oxygen", "isolation"], ["isolation"], _WOMAN)
    assert keeps_equipment(["oxygen"], [], BookedPatient())


def test_a_bed_beyond_the_reservation_keeps_green_channel_admissions_only():
    assert keeps_pool("reserved", _WOMAN)
    assert not keeps_pool("overflow", _WOMAN)
    assert keeps_pool("overflow", BookedPatient(green_channel=True))


def test_age_limits_keep_the_booked_patients_inside_them():
    assert keeps_min_age(18, _WOMAN) and keeps_max_age(60, _WOMAN) and keeps_max_age(None, _WOMAN)
    assert not keeps_min_age(65, _WOMAN) and not keeps_max_age(14, _WOMAN)
    assert not keeps_max_age(14, BookedPatient()) and keeps_max_age(None, BookedPatient())


def test_exam_preparation_texts():
    text = preparation.exam_preparation("CT", 8, True, 30, 0)
    assert text == "检查前8小时禁食；增强CT需携带近30天内肾功能结果"
    assert preparation.exam_preparation("ENDOSCOPY", 0, False, 0, 1, "检查前一天晚餐后服用泻药") == \
        "需提前1天按医嘱做检查前准备；检查前一天晚餐后服用泻药"
    assert preparation.exam_preparation("US", 0, False, 0, 0) == ""


def test_now_is_local():
    assert datetime.now(calendar.LOCAL).utcoffset() == timedelta(hours=8)
