"""Notify's settings refuse, at start, what would otherwise fail patients later: a templates
file lacking a template some event needs, SMS credentials no vendor would use, a send
timeout a graceful stop cannot wait out."""
from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from services.common import app, config
from services.notify.domain.messages import TEMPLATES, Planner
from services.notify.domain.model import SHANGHAI, Appointment, Place, Route
from services.notify.domain.templates import DEFAULT_FILE, INSTRUCTIONS, Catalogue, TemplateError
from services.notify.service_layer.dispatch import RECORD_MARGIN, DispatchSettings
from services.notify.settings import REQUIRED_TEMPLATES, NotifySettings

ALIYUN = {"ALIYUN_ACCESS_KEY_ID": "LTAI-id", "ALIYUN_ACCESS_KEY_SECRET": "ak-secret", "ALIYUN_SMS_SIGN_NAME": "县医共体"}
TENCENT = {"TENCENT_SECRET_ID": "AKID-id", "TENCENT_SECRET_KEY": "tc-secret", "TENCENT_SMS_SDK_APP_ID": "1400000000",
           "TENCENT_SMS_SIGN_NAME": "县医共体"}
WECHAT = {"WECHAT_APPID": "wx123", "WECHAT_APPSECRET": "wx-secret"}


def _notify(dev_mode: bool = False, **fields) -> NotifySettings:
    base, problems = config.read("notify")
    assert problems == []
    settings = dataclasses.replace(base, database_url="postgresql://db/x", nats_url="nats://n:4222",
                                   dev_mode=dev_mode, **fields)
    return NotifySettings.from_settings(settings)


def _problems(dev_mode: bool = False, **fields) -> list[str]:
    with pytest.raises(config.SettingsError) as refused:
        _notify(dev_mode, **fields)
    return refused.value.problems


# ---------------------------------------------------------------- templates


def _without(text: str, *keys: str) -> str:
    """The default templates file without the tables of `keys`."""
    for key in keys:
        text = re.sub(rf"^\[template\.{key}\]\n(?:(?!\[).*\n)*", "", text, flags=re.M)
    return text


def test_a_templates_file_without_the_exam_templates_is_refused_at_start(env, tmp_path):
    path = tmp_path / "templates.toml"
    path.write_text(_without(DEFAULT_FILE.read_text(encoding="utf-8"), "exam_booked", "exam_reminder_2h",
                             INSTRUCTIONS), encoding="utf-8")
    env.set(**WECHAT, NOTIFY_TEMPLATES_FILE=str(path))
    assert _problems() == ["NOTIFY_TEMPLATES_FILE is not valid: has no template exam_booked, exam_reminder_2h, "
                           "instructions: the messages that use them could never be sent"]
    path.write_text(DEFAULT_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    assert _notify().catalogue.get("exam_booked").key == "exam_booked"


def test_a_template_without_a_field_is_a_template_error_in_the_one_report(env, tmp_path):
    text = DEFAULT_FILE.read_text(encoding="utf-8")
    broken = re.sub(r'(\[template\.bed_ready\]\n(?:(?!\[).*\n)*?)aliyun = .*\n', r"\1", text)
    assert broken != text
    with pytest.raises(TemplateError, match="template bed_ready has no 'aliyun'"):
        Catalogue.from_toml(broken)
    path = tmp_path / "templates.toml"
    path.write_text(broken, encoding="utf-8")
    env.set(**WECHAT, NOTIFY_TEMPLATES_FILE=str(path), QUIET_HOURS="never")
    problems = _problems()
    assert "NOTIFY_TEMPLATES_FILE is not valid: template bed_ready has no 'aliyun'" in problems
    assert [p.split(" ")[0] for p in problems] == ["NOTIFY_TEMPLATES_FILE", "QUIET_HOURS"]
    no_wechat_id = re.sub(r'template_id = "wx-tmpl-bed-ready", ', "", text)
    if no_wechat_id != text:
        with pytest.raises(TemplateError, match="template bed_ready has no 'wechat.template_id'"):
            Catalogue.from_toml(no_wechat_id)


def _templates_planned() -> set[str]:
    """The templates the planner names, from its own plans for every event and item kind."""
    planner = Planner(Catalogue.load())
    route = Route("R1", "P1", "H1", "C1", department="cardiology")
    def start(day: int) -> datetime:
        return datetime(2030, 6, day, 10, 0, tzinfo=SHANGHAI)
    now = start(1)
    items = [Appointment(f"i-{kind}", kind, start(10), Place("医院", "门诊楼", "2楼", ""), modality="CT")
             for kind in ("consultation", "exam", "admission")]
    moved = [dataclasses.replace(a, start=start(12)) for a in items]
    plans = [planner.referral_status(route, s) for s in ("ACCEPTED", "RETURNED", "REJECTED", "CANCELLED")]
    plans += [planner.down_referral(route, "", "", None), planner.scheduled(route, "B1", items, "", now),
              planner.rescheduled(route, "B1", moved, items, "", now, ""),
              planner.booking_cancelled(route, "B1", items, now, ""),
              planner.bed_ready(route, "B1", "", "", "", start(10), "")]
    return {m.template for plan in plans for m in plan.messages}


def test_the_templates_checked_at_start_are_every_one_the_planner_picks():
    assert _templates_planned() == TEMPLATES
    assert REQUIRED_TEMPLATES >= TEMPLATES | {INSTRUCTIONS, "staff_message"}
    assert REQUIRED_TEMPLATES <= Catalogue.load().templates.keys()


# ---------------------------------------------------------------- SMS vendor


def test_tencent_credentials_choose_tencent_when_sms_vendor_is_unset(env):
    env.set(**WECHAT, **TENCENT)
    for dev_mode in (False, True):
        ns = _notify(dev_mode)
        assert ns.sms_vendor == "tencent" and ns.sms["secret_id"] == "AKID-id" and ns.sms_param_limit == 12


def test_half_of_tencent_credentials_are_reported_even_with_wechat_in_dev_mode(env):
    env.set(**WECHAT, TENCENT_SECRET_ID="AKID-id")
    assert [p.split(" ")[0] for p in _problems(dev_mode=True)] == [
        "TENCENT_SECRET_KEY", "TENCENT_SMS_SDK_APP_ID", "TENCENT_SMS_SIGN_NAME"]


def test_both_vendors_credentials_without_sms_vendor_are_refused(env):
    env.set(**WECHAT, **ALIYUN, **TENCENT)
    problems = _problems(dev_mode=True)
    assert len(problems) == 1 and problems[0].startswith("SMS_VENDOR must be set: the settings of aliyun and "
                                                         "tencent are all set")
    assert "ak-secret" not in problems[0] and "tc-secret" not in problems[0]
    env.set(SMS_VENDOR="tencent", **{name: "" for name in ALIYUN})
    assert _notify().sms_vendor == "tencent"


def test_the_other_vendors_credentials_beside_sms_vendor_are_reported_at_start(env):
    # Not refused: the vendors' secret may hold both, to switch by SMS_VENDOR alone.
    env.set(**WECHAT, **ALIYUN, SMS_VENDOR="aliyun", TENCENT_SECRET_ID="AKID-id")
    ns = _notify(dev_mode=True)
    assert ns.sms_vendor == "aliyun" and ns.unused_sms_settings == ("TENCENT_SECRET_ID",)
    env.set(TENCENT_SECRET_ID="")
    assert _notify(dev_mode=True).unused_sms_settings == ()


# ---------------------------------------------------------------- send timeout and shutdown


def test_the_default_send_timeout_fits_the_default_shutdown_and_lease(env):
    env.set(**WECHAT)
    ns = _notify()
    grace = config.read("notify")[0].shutdown_grace_seconds
    assert 2 * ns.dispatch.send_timeout.total_seconds() <= app.shutdown_work_seconds(grace)
    assert ns.dispatch.lease >= ns.dispatch.send_timeout + RECORD_MARGIN
    assert DispatchSettings().send_timeout == ns.dispatch.send_timeout


def test_a_send_timeout_a_graceful_stop_cannot_wait_out_twice_is_refused(env):
    env.set(**WECHAT, NOTIFY_SEND_TIMEOUT_SECONDS="8")  # the default grace leaves the work 15 s
    assert _problems() == ["NOTIFY_SEND_TIMEOUT_SECONDS must be at most 7.5: a status pull and a send, each bounded "
                           "by it, must end within the 15 s a shutdown leaves them (SHUTDOWN_GRACE_SECONDS less up "
                           "to 5 s), got '8'"]
    assert _notify(shutdown_grace_seconds=30.0).dispatch.send_timeout == timedelta(seconds=8)
    env.set(NOTIFY_SEND_TIMEOUT_SECONDS="4")  # a grace of 10 s leaves 7.5 s: 2 x 4 does not fit
    assert [p.split(" ")[0] for p in _problems(shutdown_grace_seconds=10.0)] == ["NOTIFY_SEND_TIMEOUT_SECONDS"]


def test_a_short_lease_is_reported_with_the_dispatch_settings_own_reason(env):
    env.set(**WECHAT, NOTIFY_LEASE_SECONDS="15", NOTIFY_SEND_TIMEOUT_SECONDS="6")
    with pytest.raises(ValueError) as reason:
        DispatchSettings(lease=timedelta(seconds=15), send_timeout=timedelta(seconds=6))
    assert _problems() == [f"NOTIFY_LEASE_SECONDS is too short: {reason.value}, got '15'"]


def test_the_shutdown_work_budget_is_the_one_app_stop_uses():
    source = Path(app.__file__).read_text(encoding="utf-8")
    assert "work = shutdown_work_seconds(grace)" in source
    assert app.shutdown_work_seconds(20.0) == 15.0 and app.shutdown_work_seconds(8.0) == 6.0
