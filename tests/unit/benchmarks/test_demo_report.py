"""The consortium office's report, from cases made up here (no system running)."""
from benchmarks.demo.day import Case
from benchmarks.demo.report import waitlist_lines
from common.v1 import types_pb2 as common
from referral.v1 import referral_service_pb2 as api
from referral.v1 import types_pb2 as rtypes


def _case(state: int, urgency: int, reason: str = "") -> Case:
    return Case(api.CreateReferralRequest(), {"urgency": urgency}, "CLINIC01", state=state, waitlist_reason=reason)


def test_the_waitlist_is_counted_by_reason_and_urgency_most_frequent_first():
    waiting, booked = rtypes.REFERRAL_STATE_WAITLISTED, rtypes.REFERRAL_STATE_SCHEDULED
    cases = [_case(waiting, common.URGENCY_ROUTINE, "没有床位"),
             _case(waiting, common.URGENCY_EMERGENCY, "没有骨科号源"),
             _case(waiting, common.URGENCY_EMERGENCY, "没有骨科号源"),
             _case(waiting, common.URGENCY_URGENT, "没有骨科号源"),
             _case(booked, common.URGENCY_EMERGENCY, "没有骨科号源")]
    assert waitlist_lines(cases) == ["    2 emergency 急诊: 没有骨科号源",
                                     "    1 urgent 加急: 没有骨科号源",
                                     "    1 routine 普通: 没有床位"]
