"""An instruction (what to bring, how to prepare) is never lost to a vendor's length limit:
the message keeps what fits and points to the instructions message, which carries it whole.
A booking's items are announced and reminded in a template per kind, so that one booking does
not exceed the vendors' per-template daily cap."""
from __future__ import annotations

from collections import Counter
from datetime import datetime

import pytest

from services.common.errors import Violations
from services.notify.adapters.channels import validate_subscribe_data
from services.notify.domain.messages import Planner
from services.notify.domain.model import SHANGHAI, Appointment, Place, Route
from services.notify.domain.policy import Caps
from services.notify.domain.templates import INSTRUCTIONS, POINTER, Catalogue, render, spread
from services.notify.service_layer.api import check_note

CAT = Catalogue.load()
ROUTE = Route("R1", "P1", "H1", "C1", department="cardiology")
KIDNEY = "请携带近3个月肾功能结果，检查前禁食4小时"
BRING = "身份证、医保卡、转诊单及既往检查结果"  # what scheduling tells patients to bring
TENCENT, ALIYUN = 12, 35


def sh(*args) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)


def _exam(item_id: str, hour: int, room: str, prep: str) -> Appointment:
    return Appointment(item_id, "exam", sh(2030, 6, 10, hour, 0), Place("白城市中心医院", "医技楼", "1楼", room),
                       modality="CT", preparation=prep)


def _booked_values(prep: str = KIDNEY, bring: str = BRING) -> dict[str, str]:
    return Planner(CAT).appointment_values(ROUTE, _exam("ct", 9, "CT室", prep), bring)


def _whole(pieces: list[dict[str, str]]) -> str:
    return "".join(v for values in pieces for k, v in values.items() if k != "index")


def test_an_instruction_that_does_not_fit_keeps_what_fits_and_points_to_the_instructions_message():
    tpl = CAT.get("exam_booked")
    rendered = render(tpl, _booked_values(), sms_param_limit=TENCENT)
    prep, bring = rendered.sms_params["prep"], rendered.sms_params["bring"]
    assert prep == "请携带近3个月肾" + POINTER and len(prep) == TENCENT
    assert bring == "身份证医保卡转诊" + POINTER
    assert rendered.sms_cut == {"bring", "prep"}
    # A time or a place is shortened as before, without a pointer: nothing of it is an instruction.
    assert not any(POINTER in v for k, v in rendered.sms_params.items() if k not in ("bring", "prep"))
    # What the SMS lost, the instructions message carries, worded whole.
    assert tpl.instruction_lines(_booked_values(), rendered.sms_cut) == [f"请携带{BRING}", f"CT室：{KIDNEY}"]
    # Aliyun's 35 characters hold both: nothing to point to.
    roomy = render(tpl, _booked_values(), sms_param_limit=ALIYUN)
    assert roomy.sms_cut == frozenset() and roomy.sms_params["prep"] == KIDNEY


def test_a_wechat_field_that_cannot_hold_an_instruction_points_to_the_instructions_message():
    long_prep = "检查前8小时禁食；增强CT需携带近30天内肾功能结果"
    rendered = render(CAT.get("exam_booked"), _booked_values(prep=long_prep), sms_param_limit=ALIYUN)
    assert rendered.wechat_data["thing5"].endswith(POINTER) and len(rendered.wechat_data["thing5"]) == 20
    assert rendered.wechat_cut == {"prep"} and rendered.sms_cut == frozenset()
    assert validate_subscribe_data(rendered.wechat_data) == []
    # "请携带" and the bring text still fit a thing once their separators go.
    assert rendered.wechat_data["thing4"] == "请携带身份证医保卡转诊单及既往检查结果"


@pytest.mark.parametrize("size", [TENCENT, 20, ALIYUN, 0])
def test_the_instructions_message_carries_the_text_whole_in_pieces_within_the_limit(size):
    tpl = CAT.get(INSTRUCTIONS)
    text = "；".join([f"请携带{BRING}", f"CT室：{KIDNEY}", "磁共振室：检查前去除金属物品，有心脏起搏器者请提前告知",
                     "胃肠镜室：检查前一天晚餐后按说明服用泻药；检查前8小时禁食"])
    messages = spread(tpl, text, size)
    assert _whole(messages) == text
    assert [m["index"] for m in messages] == [f"{i}/{len(messages)}" for i in range(1, len(messages) + 1)]
    for values in messages:
        rendered = render(tpl, {"referral_id": "R1", **values}, sms_param_limit=size)
        assert rendered.sms_params == values  # nothing cut, nothing dropped
        assert validate_subscribe_data(rendered.wechat_data) == []
    assert len(messages) == (-(-len(text) // (5 * size)) if size else 1)


def test_a_booking_of_a_consultation_and_three_exams_stays_within_the_per_template_daily_cap():
    consult = Appointment("consult", "consultation", sh(2030, 6, 10, 8, 0),
                          Place("白城市中心医院", "门诊楼", "3楼", "心内科2诊室"), department="cardiology")
    exams = [_exam("ct", 9, "CT室", KIDNEY), _exam("mri", 10, "磁共振室", "检查前去除金属物品"),
             _exam("us", 11, "超声3室", "检查前8小时禁食禁水")]
    plan = Planner(CAT).scheduled(ROUTE, "B1", [consult, *exams], BRING, sh(2030, 6, 1, 10, 0))
    by_day: Counter = Counter((m.template, (m.not_before or sh(2030, 6, 1, 10, 0)).date()) for m in plan.messages)
    assert max(by_day.values()) <= Caps().same_template_per_day
    assert by_day[("appointment_booked", sh(2030, 6, 1).date())] == 1
    assert by_day[("exam_booked", sh(2030, 6, 1).date())] == 3
    assert by_day[("exam_reminder_2h", sh(2030, 6, 10).date())] == 3


@pytest.mark.parametrize("note", ["请回电138 1234 5678", "请回电138-1234-5678", "请回电138.1234.5678",
                                  "请回电１３８１２３４５６７８", "请回电１３８－１２３４－５６７８",
                                  "请回电１３８ １２３４ ５６７８", "身份证2201 0219 8001", "请回电138 12 34 56 78",
                                  "请回电010-1234 5678", "请回电(0571)8888-8888", "220102 19800101 123X",
                                  "请回电13812345678"])
def test_a_note_with_a_number_written_with_separators_is_refused(note):
    v = Violations()
    check_note(v, note)
    assert [f.field for f in v.items] == ["note"], note


@pytest.mark.parametrize("note", ["请明早8:30先到3楼服务台报到", "6月10日 9:30到2诊室", "带2024-3月的化验单",
                                  "请于2025.12.15到", "请于2025-12-15到", "2030-06-10复诊", "10.30-11.30到2诊室",
                                  "２０２５．１２．１５ １０．３０到", "12.15 13.30-14.30到"])
def test_a_note_with_times_and_rooms_passes(note):
    v = Violations()
    check_note(v, note)
    assert not v.items
