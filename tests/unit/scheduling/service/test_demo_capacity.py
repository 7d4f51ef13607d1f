"""The demo publishes no capacity that has already begun (it would count as wasted)."""
from datetime import date

from services.scheduling import demo
from services.scheduling.domain import calendar

MONDAY = date(2026, 11, 23)


def _starts(now):
    return [calendar.at(date(s.date.year, s.date.month, s.date.day), calendar.parse_hhmm(s.start_time))
            for s in demo.sessions(now)]


def test_sessions_and_exam_days_that_began_are_not_published():
    early, mid_morning = calendar.at(MONDAY, 7 * 60), calendar.at(MONDAY, 9 * 60)
    assert min(_starts(early)) == calendar.at(MONDAY, 8 * 60)
    assert min(_starts(mid_morning)) == calendar.at(MONDAY, 14 * 60)  # the morning session began
    assert len(_starts(early)) - len(_starts(mid_morning)) == 2 * len(demo.DEPARTMENTS)  # expert and general
    days = {(c.date.month, c.date.day) for c in demo.exam_capacity(mid_morning)}
    assert (MONDAY.month, MONDAY.day) not in days and len(days) == demo.DAYS - 1
    assert (MONDAY.month, MONDAY.day) in {(c.date.month, c.date.day) for c in demo.exam_capacity(early)}
