"""What the use cases take: plain data, already checked for shape by the adapters."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from services.referral.domain.model import Consent, Direction, Need, PriorResult, Purpose, Urgency


@dataclass
class PatientInput:
    display_name: str
    id_number: str
    mobile: str
    wechat_openid: str = ""


@dataclass
class CreateReferral:
    request_id: str
    direction: Direction
    receiving_institution_id: str
    urgency: Urgency
    patient: PatientInput
    diagnosis_code: str
    department: str
    green_channel: bool = False
    diagnosis_text: str = ""
    clinical_summary: str = ""
    justification: str = ""
    purpose: Purpose = Purpose.UNSPECIFIED
    needs: list[Need] = field(default_factory=list)
    available_dates: list[date] = field(default_factory=list)
    prior_results: list[PriorResult] = field(default_factory=list)
    consent: Consent | None = None
    draft: bool = False
    deductible_paid_fen: int = 0
    episode_id: str = ""


@dataclass
class DownReferralProposal:
    receiving_institution_id: str
    care_plan: str
    follow_up_dates: list[date]
    consent: Consent | None
    purpose: Purpose


@dataclass
class ListFilter:
    page_size: int
    after: tuple[str, str] | None  # (created_at iso, referral_id) of the last row seen
    sending_institution_id: str = ""
    receiving_institution_id: str = ""
    direction: int = 0
    states: list[int] = field(default_factory=list)
    urgency: int = 0
    department: str = ""
    created_from: object = None
    created_to: object = None


@dataclass
class ChronicCareUpdate:
    patient: PatientInput
    condition_code: str
    colour: int
    reason: str = ""
    proposed_receiving_institution_id: str = ""
