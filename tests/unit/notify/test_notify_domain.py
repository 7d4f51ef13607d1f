"""Pure rules of notify: quiet hours, channel choice, caps, retry, templates, planning."""
from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.notify.adapters.channels import validate_subscribe_data
from services.notify.domain.messages import Planner, ReminderRules
from services.notify.domain.model import (
    SHANGHAI, Appointment, Channel, Contact, Place, Route, SkipReason, delivery_rate)
from services.notify.domain.policy import Caps, QuietHours, RetryPolicy, cap_deferral, choose_channels
from services.notify.domain.templates import DEFAULT_FILE, Catalogue, TemplateError, fit, render

CAT = Catalogue.load()
ROUTE = Route("R1", "P1", "H1", "C1", department="cardiology")


def sh(*args) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)


def test_quiet_hours_across_midnight():
    q = QuietHours.parse("21:00-08:00")
    assert q.contains(sh(2030, 1, 1, 22, 0)) and q.contains(sh(2030, 1, 2, 7, 59))
    assert not q.contains(sh(2030, 1, 1, 8, 0)) and not q.contains(sh(2030, 1, 1, 20, 59))
    assert q.next_allowed(sh(2030, 1, 1, 22, 0)) == sh(2030, 1, 2, 8, 0)
    assert q.next_allowed(sh(2030, 1, 2, 3, 0)) == sh(2030, 1, 2, 8, 0)
    assert q.next_allowed(sh(2030, 1, 2, 12, 0)) == sh(2030, 1, 2, 12, 0)
    # Works the same from a UTC clock.
    assert q.contains(sh(2030, 1, 1, 23, 0).astimezone(UTC))


def test_quiet_hours_parsing():
    assert QuietHours.parse("off").contains(sh(2030, 1, 1, 23, 0)) is False
    assert QuietHours.parse("12:00-14:00").contains(sh(2030, 1, 1, 13, 0))
    with pytest.raises(ValueError):
        QuietHours.parse("9pm-8am")


def test_channel_choice_follows_subscription_consent_and_preferences():
    def choose(contact: Contact, essential: bool = True, template: str = "wx-tmpl-appointment"):
        return choose_channels(contact, essential=essential, wechat_template=template)
    both = Contact("P", has_mobile=True, wechat_openid="o" * 28)
    assert choose(both) == [Channel.WECHAT, Channel.SMS]
    assert choose(Contact("P", has_mobile=True)) == [Channel.SMS]
    # A refusal is per template: the patient keeps WeChat for the templates still accepted.
    refused = Contact("P", has_mobile=True, wechat_openid="o" * 28,
                      wechat_refused_templates=frozenset({"wx-tmpl-appointment"}))
    assert choose(refused) == [Channel.SMS]
    assert choose(refused, template="wx-tmpl-reminder") == [Channel.WECHAT, Channel.SMS]
    sms_first = Contact("P", has_mobile=True, wechat_openid="o" * 28, channels=(Channel.SMS,))
    assert choose(sms_first) == [Channel.SMS]
    assert choose(Contact("P", has_mobile=True, consent=False)) is SkipReason.NO_CONSENT
    opted = Contact("P", has_mobile=True, opt_out_non_essential=True)
    assert choose(opted, essential=False) is SkipReason.OPTED_OUT
    assert choose(opted) == [Channel.SMS]
    assert choose(Contact("P")) is SkipReason.NO_CONTACT


def test_caps_defer_below_vendor_limits():
    now = sh(2030, 5, 1, 10, 0)
    caps = Caps(same_template_per_day=2, per_day=3, per_hour=2, min_spacing=timedelta(seconds=35))
    assert cap_deferral(now, caps, same_template_today=[], all_recent=[]) is None
    assert cap_deferral(now, caps, same_template_today=[], all_recent=[now - timedelta(seconds=10)]) == \
        now + timedelta(seconds=25)
    two = [now - timedelta(hours=5), now - timedelta(hours=4)]
    assert cap_deferral(now, caps, same_template_today=two, all_recent=two) == sh(2030, 5, 2, 0, 0)
    hour = [now - timedelta(minutes=50), now - timedelta(minutes=20)]
    assert cap_deferral(now, caps, same_template_today=[], all_recent=hour) == now + timedelta(minutes=10)


def test_retry_backoff_grows_with_jitter_and_is_capped():
    policy = RetryPolicy(base=timedelta(seconds=10), cap=timedelta(seconds=60), max_attempts=4)
    rng = random.Random(1)
    delays = [policy.delay(a, rng).total_seconds() for a in (1, 2, 3, 4, 5)]
    assert 5 <= delays[0] <= 10 and 10 <= delays[1] <= 20 and 20 <= delays[2] <= 40
    assert all(d <= 60 for d in delays) and 30 <= delays[4]
    assert policy.exhausted(4) and not policy.exhausted(3)


def test_fit_drops_separators_then_cuts():
    assert fit("身份证、医保卡、既往检查结果", 12) == "身份证医保卡既往检查结果"
    assert fit("县人民医院门诊楼三楼心内科二诊室", 12) == "县人民医院门诊楼三楼心…"
    assert fit("短", 12) == "短"


def _appointment(kind="consultation", prep="") -> Appointment:
    return Appointment("I1", kind, sh(2030, 6, 10, 9, 30), Place("白城市中心医院", "门诊医技综合楼", "3楼", "心内科2诊室"),
                       department="cardiology", modality="US", preparation=prep, ward="心内科一病区", bed="12")


def _sample_values(planner: Planner) -> dict[str, str]:
    values = planner.appointment_values(ROUTE, _appointment(prep="检查前8小时禁食禁水"), "身份证、医保卡、既往检查结果")
    values.update({"admit_by": "6月10日14:00", "admit_when": "2030年6月10日 14:00", "bed": "12",
                   "clinic": "城关镇卫生院", "address": "城关镇人民路8号", "followup": "6月20日",
                   "note": "请明早先到一楼服务台报到", "index": "1/1",
                   **{f"piece{i}": "检查前8小时禁食禁水" for i in range(1, 6)}})
    return values


@pytest.mark.parametrize("key", sorted(CAT.templates))
def test_every_template_renders_within_wechat_and_sms_limits(key):
    tpl = CAT.get(key)
    rendered = render(tpl, _sample_values(Planner(CAT)), sms_param_limit=12)
    assert validate_subscribe_data(rendered.wechat_data) == []
    assert list(rendered.sms_params) == list(tpl.params)
    assert all(len(v) <= 12 for v in rendered.sms_params.values())
    assert tpl.version >= 1 and "{" not in rendered.text


def test_templates_refuse_a_diagnosis_and_missing_values():
    with pytest.raises(TemplateError):
        Catalogue.from_toml('[template.x]\nversion=1\ntext="诊断：{dept}"\nparams=["dept"]\naliyun="A"\ntencent="1"\n'
                            'wechat={template_id="t", data={thing1="{dept}"}}\n')
    with pytest.raises(TemplateError):
        render(CAT.get("referral_accepted"), {"referral_id": "R1"})


@pytest.mark.parametrize("department", ["oncology", "肿瘤科", "胸部肿瘤内科", "精神卫生科", "感染性疾病科", "生殖医学中心"])
def test_a_department_that_hints_at_a_condition_is_named_by_its_place_only(department):
    planner = Planner(CAT)
    route = replace(ROUTE, department=department)
    appt = replace(_appointment(), department=department, place=Place("白城市中心医院", "门诊楼", "5楼", ""))
    plan = planner.scheduled(route, "B1", [appt], "", sh(2030, 6, 1, 10, 0))
    accepted = planner.referral_status(route, "ACCEPTED")
    for values in [m.values for m in plan.messages + accepted.messages]:
        assert values["dept"] == "专科", values
    booked = plan.messages[0].values
    assert (booked["room"], booked["place"]) == ("专科", "门诊楼5楼")
    rendered = render(CAT.get("appointment_booked"), booked)
    assert not any(word in rendered.text for word in ("肿瘤", "精神", "感染", "生殖")), rendered.text


def test_a_department_that_tells_nothing_keeps_its_name():
    assert [CAT.department(d) for d in ("cardiology", "心内科", "儿科", "")] == ["心内科", "心内科", "儿科", "专科"]


def test_the_catalogue_refuses_a_department_name_that_hints_at_a_condition():
    text = (DEFAULT_FILE.read_text(encoding="utf-8")
            .replace("[departments]\n", '[departments]\noncology = "肿瘤科"\npsychiatry = "精神科"\n'))
    with pytest.raises(TemplateError, match="oncology = '肿瘤科', psychiatry = '精神科'"):
        Catalogue.from_toml(text)


def test_booking_plans_messages_and_reminders_and_never_the_reason():
    planner = Planner(CAT)
    now = sh(2030, 6, 7, 10, 0)
    plan = planner.scheduled(ROUTE, "B1", [_appointment(prep="空腹")], "", now)
    kinds = [(m.template, m.not_before) for m in plan.messages]
    assert kinds == [("appointment_booked", None), ("reminder_day_before", sh(2030, 6, 9, 18, 0)),
                     ("reminder_2h", sh(2030, 6, 10, 7, 30))]
    day_before = plan.messages[1]
    assert day_before.expires_at == sh(2030, 6, 10, 0, 0) and day_before.reminder
    assert plan.clinic.kind == "SCHEDULED" and "白城市中心医院" in plan.clinic.summary
    # Booked less than a day ahead: the day-before reminder is already past, only the 2-hour one remains.
    late = planner.scheduled(ROUTE, "B1", [_appointment()], "", sh(2030, 6, 10, 6, 0))
    assert [m.template for m in late.messages] == ["appointment_booked", "reminder_2h"]
    assert late.messages[0].urgent  # within 12 hours: not held by quiet hours
    rejected = planner.referral_status(ROUTE, "REJECTED", reason="疑似恶性肿瘤")
    assert "肿瘤" not in str(rejected.messages) and rejected.clinic.reason == "疑似恶性肿瘤"


def _exam(start: datetime, item_id: str = "I2") -> Appointment:
    return Appointment(item_id, "exam", start, Place("白城市中心医院", "医技楼", "2楼", "超声3室"),
                       modality="US")


def _templates(plan) -> list[tuple[str, str]]:
    return [(m.template, m.part) for m in plan.messages]


@pytest.mark.parametrize(("now", "evening_reminders"), [
    # The last moment of the day before: reminded, even though quiet hours would hold the
    # announcement itself to the reminder's morning (the planning time counts).
    (sh(2030, 6, 8, 23, 59, 59), True),
    (sh(2030, 6, 9, 0, 0), False),  # the reminder's own day, from its first moment
    (sh(2030, 6, 9, 0, 30).astimezone(UTC), False),  # still the 8th in UTC: the local day counts
    (sh(2030, 6, 9, 17, 59), False),  # just before the reminder's time
])
def test_an_item_announced_on_the_day_of_its_evening_reminder_is_not_reminded_that_evening(now, evening_reminders):
    consult, exam = _appointment(), _exam(sh(2030, 6, 10, 10, 30))
    plan = Planner(CAT).scheduled(ROUTE, "B1", [consult, exam], "", now)
    evening = [("reminder_day_before", "I1"), ("exam_reminder_day_before", "I2")] if evening_reminders else []
    assert sorted(_templates(plan)) == sorted([
        ("appointment_booked", "I1"), ("reminder_2h", "I1"), ("exam_booked", "I2"), ("exam_reminder_2h", "I2"),
        *evening])
    assert [m.not_before for m in plan.messages if m.template.endswith("reminder_2h")] == [
        sh(2030, 6, 10, 7, 30), sh(2030, 6, 10, 8, 30)]


def test_the_evening_reminder_is_skipped_by_the_day_whatever_its_configured_time():
    # Reminded at 20:00: an item announced at 19:00 that day is not reminded an hour later.
    planner = Planner(CAT, ReminderRules(day_before_at=(20, 0)))
    assert _templates(planner.scheduled(ROUTE, "B1", [_appointment()], "", sh(2030, 6, 9, 19, 0))) == [
        ("appointment_booked", "I1"), ("reminder_2h", "I1")]
    # Reminded at midnight: the reminder's day has begun only once it is due, so it is never skipped.
    planner = Planner(CAT, ReminderRules(day_before_at=(0, 0)))
    assert _templates(planner.scheduled(ROUTE, "B1", [_appointment()], "", sh(2030, 6, 8, 23, 59))) == [
        ("appointment_booked", "I1"), ("reminder_day_before", "I1"), ("reminder_2h", "I1")]


def test_an_admission_announced_on_the_eve_keeps_its_reminder():
    # Its booking message gives the day only; the reminder gives the time and what to prepare.
    plan = Planner(CAT).scheduled(ROUTE, "B2", [_admission()], "", sh(2030, 6, 9, 10, 0))
    assert [(m.template, m.not_before) for m in plan.messages] == [
        ("admission_booked", None), ("admission_reminder", sh(2030, 6, 9, 18, 0))]


def test_a_reschedule_on_the_eve_skips_the_evening_reminder_of_a_moved_item_only():
    planner = Planner(CAT)
    consult, exam = _appointment(), _exam(sh(2030, 6, 10, 10, 30))
    eve = sh(2030, 6, 9, 11, 0)
    # Moved within tomorrow: told of it today, reminded only 2 hours before.
    to_tomorrow_afternoon = replace(exam, start=sh(2030, 6, 10, 15, 0))
    plan = planner.rescheduled(ROUTE, "B1", [consult, to_tomorrow_afternoon], [consult, exam], "", eve, "设备检修")
    assert _templates(plan) == [("exam_changed", "I2"), ("exam_reminder_2h", "I2")]
    # The consultation did not move: its reminders planned at booking, the evening one too, stay.
    assert plan.keep_pending_of_items == {"I1"}
    # Moved to a later day: its new day-before reminder is on another day than today's news.
    to_a_later_day = replace(exam, start=sh(2030, 6, 14, 10, 30))
    plan = planner.rescheduled(ROUTE, "B1", [consult, to_a_later_day], [consult, exam], "", eve, "设备检修")
    assert [(m.template, m.not_before) for m in plan.messages] == [
        ("exam_changed", None), ("exam_reminder_day_before", sh(2030, 6, 13, 18, 0)),
        ("exam_reminder_2h", sh(2030, 6, 14, 8, 30))]


def test_admission_items_use_the_admission_template_without_a_2h_reminder():
    plan = Planner(CAT).scheduled(ROUTE, "B2", [_appointment(kind="admission")], "", sh(2030, 6, 1, 10, 0))
    assert [m.template for m in plan.messages] == ["admission_booked", "admission_reminder"]


def _admission(**changes) -> Appointment:
    # As scheduling sends an admission: a ward, no room label, no modality.
    return replace(Appointment("I3", "admission", sh(2030, 6, 10, 9, 30), Place("白城市中心医院", "住院部", "5楼", ""),
                               ward="心内科一病区", bed="12", preparation="请携带生活用品，到病区护士站办理入院"),
                   **changes)


def test_an_admission_is_announced_and_reminded_as_an_admission_never_as_an_exam():
    planner = Planner(CAT)
    bring = "身份证、医保卡、转诊单及既往检查结果"
    plan = planner.scheduled(ROUTE, "B2", [_admission()], bring, sh(2030, 6, 1, 10, 0))
    reminder = plan.messages[1]
    assert render(CAT.get(reminder.template), reminder.values).text == (
        "入院提醒：您明天09:30到白城市中心医院住院部5楼心内科一病区办理入院，"
        "请携带身份证、医保卡、转诊单及既往检查结果。请携带生活用品，到病区护士站办理入院")
    # Moved to another ward: the change names the ward where an exam would name its room.
    moved = planner.rescheduled(ROUTE, "B2", [_admission(ward="心内科二病区")], [_admission()], bring,
                                sh(2030, 6, 1, 10, 0), "")
    changed = moved.messages[0]
    assert changed.template == "appointment_changed" and changed.values["room"] == "心内科二病区"
    assert "检查就诊" not in render(CAT.get(changed.template), changed.values).text


def test_a_reschedule_announces_the_items_that_moved_only_with_what_to_bring_as_told():
    planner = Planner(CAT)
    consult = _appointment()
    exam = Appointment("I2", "exam", sh(2030, 6, 10, 10, 30), Place("白城市中心医院", "医技楼", "2楼", "超声3室"),
                       modality="US")
    bring = "身份证、医保卡、转诊单及既往检查结果"
    later_exam = replace(exam, start=sh(2030, 6, 11, 8, 0))
    plan = planner.rescheduled(ROUTE, "B1", [consult, later_exam], [consult, exam], bring,
                               sh(2030, 6, 7, 10, 0), "设备检修")
    assert {(m.template, m.part) for m in plan.messages} == {
        ("exam_changed", "I2"), ("exam_reminder_day_before", "I2"), ("exam_reminder_2h", "I2")}
    assert all(m.values["bring"] == bring for m in plan.messages)
    # The consultation's messages still waiting stay true: only the rest of the booking's are called off.
    assert (plan.cancel_pending_of_booking, plan.keep_pending_of_items) == ("B1", {"I1"})
    assert plan.clinic.kind == "RESCHEDULED" and plan.clinic.reason == "设备检修"
    # Another room at the same time is a move; an item the patient never heard of is news.
    other_room = replace(exam, place=replace(exam.place, room="超声5室"))
    plan = planner.rescheduled(ROUTE, "B1", [consult, other_room], [exam], bring, sh(2030, 6, 7, 10, 0), "")
    assert {m.part for m in plan.messages} == {"I1", "I2"} and plan.keep_pending_of_items == frozenset()


def test_a_booking_cancellation_tells_the_patient_only_what_is_true():
    planner = Planner(CAT)
    now = sh(2030, 6, 7, 22, 30)
    plan = planner.booking_cancelled(ROUTE, "B1", [_appointment()], now, "医生停诊")
    [message] = plan.messages
    assert render(CAT.get(message.template), message.values).text == (
        "您原定6月10日 09:30在白城市中心医院的预约已取消，请等待新的安排或联系您的签约医生。")
    assert plan.cancel_pending_of_booking == "B1" and plan.clinic.kind == "BOOKING_CANCELLED"
    # The referral's cancellation already told the patient its appointments went with it.
    after_referral = planner.booking_cancelled(replace(ROUTE, cancelled=True), "B1", [_appointment()], now, "")
    # Items notify never knew: no message made of stand-in times and places.
    unknown = planner.booking_cancelled(ROUTE, "B1", [], now, "")
    for quiet in (after_referral, unknown):
        assert quiet.messages == [] and quiet.cancel_pending_of_booking == "B1"
        assert quiet.clinic.kind == "BOOKING_CANCELLED"


def test_a_cancelled_referrals_booking_events_tell_its_patient_nothing_more():
    # The referral's own message said its appointments went with it; scheduling's events on
    # its booking can reach notify after that message (the two streams are read apart).
    planner, route, now = Planner(CAT), replace(ROUTE, cancelled=True), sh(2030, 6, 7, 10, 0)
    plans = [planner.scheduled(route, "B1", [_appointment()], "", now),
             planner.rescheduled(route, "B1", [replace(_appointment(), start=sh(2030, 6, 11, 9, 30))],
                                 [_appointment()], "", now, ""),
             planner.booking_cancelled(route, "B1", [_appointment()], now, ""),
             planner.bed_ready(route, "B1", "白城市中心医院", "心内科一病区", "12", sh(2030, 6, 7, 14, 0), "住院部1楼")]
    assert [p.messages for p in plans] == [[], [], [], []]
    assert [p.clinic.kind for p in plans] == ["SCHEDULED", "RESCHEDULED", "BOOKING_CANCELLED", "BED_READY"]


def test_a_referral_cancellation_calls_off_every_message_of_the_referral_still_waiting():
    cancelled = Planner(CAT).referral_status(ROUTE, "CANCELLED")
    assert cancelled.cancel_pending_of_referral and [m.template for m in cancelled.messages] == ["referral_cancelled"]
    assert not Planner(CAT).referral_status(ROUTE, "RETURNED").cancel_pending_of_referral


def test_delivery_rate_counts_what_a_channel_took_or_tried():
    # WeChat accepted 240 and delivered them; one more it accepted then reported undelivered
    # (the patient got it by SMS): that one counts against WeChat.
    assert delivery_rate(delivered=240, sent=0, failed=0, fell_back=1) == 240 / 241
    assert delivery_rate(delivered=8, sent=1, failed=1, fell_back=0) == 0.8  # one still without a receipt
    assert delivery_rate(delivered=0, sent=0, failed=0, fell_back=0) == 0.0
