"""UpdateReferralRequest -> the fields to replace (AIP-134 field mask), every bad field a violation."""
from __future__ import annotations

from datetime import datetime

from referral.v1 import referral_service_pb2 as api
from services.common.errors import Violations
from services.referral.adapters import requests

EDITABLE_FIELDS = ("consent", "prior_results", "justification", "needs", "available_dates",
                   "additional_information")


def _populated(r: api.Referral, path: str) -> bool:
    if path == "consent":
        return r.HasField("consent")
    value = getattr(r, path)
    return bool(value.strip()) if isinstance(value, str) else len(value) > 0


def update_referral(req: api.UpdateReferralRequest, caller_subject: str, now: datetime) -> tuple[str, dict]:
    """(referral id, {attribute: new value}) for the paths in the mask.

    Empty mask: every editable field that is set in `referral`; "*": all of them (unset
    ones are cleared)."""
    referral_id = requests.parse_name(req.referral.name, "referral.name")
    r, today = req.referral, now.date()
    violations = Violations()
    paths = [p.strip() for p in req.update_mask.paths]
    if paths == ["*"]:
        paths = list(EDITABLE_FIELDS)
    elif not paths:
        paths = [p for p in EDITABLE_FIELDS if _populated(r, p)]
        violations.check(bool(paths), "update_mask", "没有要修改的字段")
    for path in paths:
        violations.check(path in EDITABLE_FIELDS, "update_mask",
                         f"不能修改字段 {path}（可修改：{', '.join(EDITABLE_FIELDS)}）")
    violations.check(len(set(paths)) == len(paths), "update_mask", "字段重复")
    changes: dict = {}
    if "consent" in paths:
        # A consent that is not given clears the recorded one (the draft cannot be submitted then).
        changes["consent"] = requests.consent_input(r.consent, caller_subject, now, violations, "referral.consent")
    if "prior_results" in paths:
        changes["prior_results"] = requests.prior_results(r.prior_results, violations, "referral.prior_results",
                                                          today)
    if "needs" in paths:
        violations.check(len(r.needs) > 0, "referral.needs", "至少需要一项需求")
        changes["needs"] = requests.needs(r.needs, violations, "referral.needs")
    if "available_dates" in paths:
        changes["available_dates"] = requests.dates(r.available_dates, violations, "referral.available_dates", today)
    for name in ("justification", "additional_information"):
        if name in paths:
            requests.check_text(violations, getattr(r, name), f"referral.{name}")
            changes[name] = getattr(r, name).strip()
    violations.raise_if_any()
    return referral_id, changes
