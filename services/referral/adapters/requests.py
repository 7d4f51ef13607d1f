"""Proto requests -> commands, checking every field's shape and collecting every
violation (field paths as in the request) before anything is written."""
from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import date, datetime, timedelta

from referral.v1 import referral_service_pb2 as api
from services.common.errors import FieldViolation, InvalidArgument, Violations
from services.referral.adapters import mapping
from services.referral.domain import validators as v
from services.referral.domain.model import Consent, Direction, Purpose, Urgency
from services.referral.service_layer import commands

MAX_TEXT = 4000
MAX_PAGE = 200
DEFAULT_PAGE = 50
KNOWN_NEED_KINDS = {"consultation", "exam", "admission"}


def parse_name(name: str, field: str = "name") -> str:
    referral_id = name[len(mapping.PREFIX):] if name.startswith(mapping.PREFIX) else ""
    if v.token_error(referral_id):
        raise InvalidArgument(FieldViolation(field, "应为 referrals/{referral_id}"))
    return referral_id


def parse_child_name(name: str, collection: str, field: str = "name") -> tuple[str, str]:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "consortiums" or parts[2] != collection or v.token_error(parts[1]) \
            or not parts[3]:
        raise InvalidArgument(FieldViolation(field, f"应为 consortiums/{{consortium_id}}/{collection}/{{id}}"))
    return parts[1], parts[3]


def parse_consortium_name(name: str, field: str) -> str:
    consortium_id = name[len("consortiums/"):] if name.startswith("consortiums/") else ""
    if v.token_error(consortium_id):
        raise InvalidArgument(FieldViolation(field, "应为 consortiums/{consortium_id}"))
    return consortium_id


def page_size(violations: Violations, value: int, *, default: int = DEFAULT_PAGE, maximum: int = MAX_PAGE) -> int:
    """0 means the default; above the maximum is capped, not refused (AIP-158)."""
    violations.check(value >= 0, "page_size", "不能为负数")
    return min(value or default, maximum)


# Largest values of the columns a decimal from a request ends up compared with.
INT4_MAX, INT8_MAX = 2**31 - 1, 2**63 - 1


def decimal(value: str, maximum: int) -> int | None:
    """A non-negative decimal number within `maximum`, or None. ASCII digits only:
    str.isdigit() also takes "²", which int() refuses."""
    if not (value.isascii() and value.isdigit()) or int(value) > maximum:
        return None
    return int(value)


def check_text(violations: Violations, value: str, field: str, *, required: bool = False,
               limit: int = MAX_TEXT) -> None:
    if required and not value.strip():
        violations.add(field, "必填")
    elif len(value) > limit:
        violations.add(field, f"不能超过{limit}个字符")


def patient_input(p: api.PatientInput, violations: Violations, field: str, today: date) -> commands.PatientInput:
    check_text(violations, p.display_name, f"{field}.display_name", required=True, limit=50)
    for sub, error in (("id_number", v.id_number_error(p.id_number, today)), ("mobile", v.mobile_error(p.mobile))):
        if error:
            violations.add(f"{field}.{sub}", error)
    return commands.PatientInput(p.display_name.strip(), v.normalise_id_number(p.id_number), p.mobile.strip(),
                                 p.wechat_openid.strip())


def consent_input(c: api.Consent, caller_subject: str, now: datetime, violations: Violations,
                  field: str) -> Consent | None:
    if not c.given:
        return None
    try:
        recorded_at = mapping.from_ts(c.record_time) if c.HasField("record_time") else now
    except ValueError:  # outside the Timestamp range (year 1-9999)
        recorded_at = now - timedelta(days=366)
    if recorded_at > now + timedelta(minutes=5) or recorded_at < now - timedelta(days=365):
        violations.add(f"{field}.record_time", "知情同意记录时间超出范围")
    check_text(violations, c.recorded_by, f"{field}.recorded_by", limit=100)
    return Consent(True, c.recorded_by.strip() or caller_subject, recorded_at, c.method.strip())


def prior_results(items, violations: Violations, field: str, today: date):
    out = []
    for i, item in enumerate(items):
        path = f"{field}[{i}]"
        check_text(violations, item.exam_type, f"{path}.exam_type", required=True, limit=40)
        check_text(violations, item.reference, f"{path}.reference", required=True, limit=200)
        if item.institution_id and v.token_error(item.institution_id):
            violations.add(f"{path}.institution_id", v.token_error(item.institution_id, "机构编号"))
        error = v.date_error(mapping.from_pdate(item.result_date), earliest=today - timedelta(days=3650),
                             latest=today)
        if error:
            violations.add(f"{path}.result_date", error)
        out.append(mapping.result_from_proto(item))
    return out


def needs(items, violations: Violations, field: str):
    out, seen = [], set()
    for i, item in enumerate(items):
        path = f"{field}[{i}]"
        need = mapping.need_from_proto(item, i)
        if need.kind not in KNOWN_NEED_KINDS:
            violations.add(path, "须为门诊、检查或住院之一")
        elif need.kind == "exam" and not need.modality:
            violations.add(f"{path}.exam.modality", "必填")
        elif need.kind in ("consultation", "admission") and not need.department:
            violations.add(f"{path}.{need.kind}.department", "必填")
        elif need.kind == "admission" and not 0 < need.expected_nights <= 365:
            violations.add(f"{path}.admission.expected_nights", "应为1-365")
        if need.need_id in seen:
            violations.add(f"{path}.need_id", "重复")
        seen.add(need.need_id)
        out.append(need)
    return out


def dates(items, violations: Violations, field: str, today: date, horizon_days: int = 366) -> list[date]:
    out = []
    for i, item in enumerate(items):
        d = mapping.from_pdate(item)
        error = v.date_error(d, earliest=today, latest=today + timedelta(days=horizon_days))
        if error:
            violations.add(f"{field}[{i}]", error)
        else:
            out.append(d)
    return sorted(set(out))


def create_referral(req: api.CreateReferralRequest, caller_subject: str, now: datetime) -> commands.CreateReferral:
    today = now.date()
    violations = Violations()
    r = req.referral
    if len(req.request_id) > 64:
        violations.add("request_id", "不能超过64个字符")
    violations.check(r.direction in (1, 2), "referral.direction", "须为上转或下转")
    violations.check(r.urgency in (1, 2, 3), "referral.urgency", "须指定紧急程度")
    if r.receiving_institution_id and v.token_error(r.receiving_institution_id):
        violations.add("referral.receiving_institution_id", v.token_error(r.receiving_institution_id, "机构编号"))
    violations.check(bool(r.receiving_institution_id), "referral.receiving_institution_id", "必填")
    error = v.icd10_error(r.diagnosis_code)
    if error:
        violations.add("referral.diagnosis_code", error)
    check_text(violations, r.department, "referral.department", required=True, limit=60)
    for name in ("diagnosis_text", "clinical_summary", "justification"):
        check_text(violations, getattr(r, name), f"referral.{name}")
    violations.check(r.purpose in (0, 1, 2, 3, 4), "referral.purpose", "未知的转诊目的")
    violations.check(0 <= req.deductible_paid_fen <= 10_000_000, "deductible_paid_fen", "金额超出范围")
    patient = patient_input(req.patient, violations, "patient", today)
    cmd = commands.CreateReferral(
        request_id=req.request_id or uuid.uuid4().hex,
        direction=Direction(r.direction) if r.direction in (1, 2) else Direction.UP,
        receiving_institution_id=r.receiving_institution_id, urgency=Urgency(r.urgency) if r.urgency in (1, 2, 3)
        else Urgency.ROUTINE, patient=patient, diagnosis_code=v.normalise_icd10(r.diagnosis_code),
        department=r.department.strip(), green_channel=r.green_channel, diagnosis_text=r.diagnosis_text,
        clinical_summary=r.clinical_summary, justification=r.justification.strip(),
        purpose=Purpose(r.purpose) if r.purpose in (0, 1, 2, 3, 4) else Purpose.UNSPECIFIED,
        needs=needs(r.needs, violations, "referral.needs"),
        available_dates=dates(r.available_dates, violations, "referral.available_dates", today),
        prior_results=prior_results(r.prior_results, violations, "referral.prior_results", today),
        consent=consent_input(r.consent, caller_subject, now, violations, "referral.consent"),
        draft=req.draft, deductible_paid_fen=req.deductible_paid_fen, episode_id=req.episode_id.strip())
    violations.raise_if_any()
    return cmd


def proposal(req: api.CompleteReferralRequest, caller_subject: str, now: datetime
             ) -> commands.DownReferralProposal | None:
    if not req.HasField("down_referral"):
        return None
    violations = Violations()
    p = req.down_referral
    if p.receiving_institution_id and v.token_error(p.receiving_institution_id):
        violations.add("down_referral.receiving_institution_id", v.token_error(p.receiving_institution_id))
    check_text(violations, p.care_plan, "down_referral.care_plan", required=True)
    follow = dates(p.follow_up_dates, violations, "down_referral.follow_up_dates", now.date(), 730)
    consent = consent_input(p.consent, caller_subject, now, violations, "down_referral.consent")
    violations.check(p.purpose in (0, 1, 2, 3, 4), "down_referral.purpose", "未知的转诊目的")
    violations.raise_if_any()
    return commands.DownReferralProposal(p.receiving_institution_id, p.care_plan, follow, consent,
                                         Purpose(p.purpose) if p.purpose else Purpose.REHABILITATION)


# --- pagination (AIP-158): opaque, bound to the filter it was issued for -----------------


def _filter_digest(req: api.ListReferralsRequest) -> str:
    copy = api.ListReferralsRequest()
    copy.CopyFrom(req)
    copy.page_token, copy.page_size = "", 0
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()[:16]


def page_token(req: api.ListReferralsRequest, created_at: datetime, referral_id: str) -> str:
    raw = json.dumps({"t": created_at.isoformat(), "i": referral_id, "f": _filter_digest(req)})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def list_filter(req: api.ListReferralsRequest) -> commands.ListFilter:
    violations = Violations()
    size = page_size(violations, req.page_size)
    after = None
    if req.page_token:
        try:
            data = json.loads(base64.urlsafe_b64decode(req.page_token.encode()))
            if data["f"] != _filter_digest(req):
                raise ValueError("filter changed")
            after = (datetime.fromisoformat(data["t"]), str(data["i"]))
        except (ValueError, KeyError, TypeError):
            violations.add("page_token", "无效的分页标记（或筛选条件已改变）")
    for name in ("sending_institution_id", "receiving_institution_id"):
        value = getattr(req, name)
        if value and v.token_error(value):
            violations.add(name, v.token_error(value, "机构编号"))
    violations.check(req.direction in (0, 1, 2), "direction", "未知的方向")
    violations.check(all(1 <= s <= 11 for s in req.states), "states", "未知的状态")
    violations.check(req.urgency in (0, 1, 2, 3), "urgency", "未知的紧急程度")
    start = _timestamp(violations, req, "create_time_start")
    end = _timestamp(violations, req, "create_time_end")
    if start and end and end < start:
        violations.add("create_time_end", "不能早于开始时间")
    violations.raise_if_any()
    return commands.ListFilter(
        page_size=size, after=after,  # type: ignore[arg-type]
        sending_institution_id=req.sending_institution_id, receiving_institution_id=req.receiving_institution_id,
        direction=req.direction, states=list(req.states), urgency=req.urgency, department=req.department,
        created_from=start, created_to=end)


def chronic_update(req: api.UpdateChronicCareStatusRequest, today: date) -> commands.ChronicCareUpdate:
    violations = Violations()
    patient = patient_input(req.patient, violations, "patient", today)
    error = v.icd10_error(req.condition_code)
    if error:
        violations.add("condition_code", error)
    violations.check(req.colour in (1, 2, 3), "colour", "须为绿、黄、红之一")
    check_text(violations, req.reason, "reason")
    target = req.proposed_receiving_institution_id
    if target and v.token_error(target):
        violations.add("proposed_receiving_institution_id", v.token_error(target, "机构编号"))
    violations.raise_if_any()
    return commands.ChronicCareUpdate(patient, v.normalise_icd10(req.condition_code), req.colour, req.reason, target)


def _timestamp(violations: Violations, req, name: str):
    """A Timestamp outside 0001-9999 (or with bad nanos) is the caller's error, not ours."""
    if not req.HasField(name):
        return None
    try:
        return mapping.from_ts(getattr(req, name))
    except (ValueError, OverflowError):
        violations.add(name, "时间无效")
        return None
