"""Seeded synthetic patients and up-referrals for the DEMO consortium (demo and bench)."""
from __future__ import annotations

import random
import uuid
from datetime import date, timedelta

from common.v1 import types_pb2 as common
from referral.v1 import referral_service_pb2 as api
from referral.v1 import types_pb2 as rtypes
from services.referral.domain.validators import id_check_digit

# (ICD-10, text, department, exams wanted, admission ward department or "", catalogue disease)
CASES = [
    ("I63.9", "脑梗死", "neurology", ["MRI", "CT"], "", False),
    ("I25.1", "冠心病，胸痛加重", "cardiology", ["US"], "cardiology", True),
    ("I21.9", "急性心肌梗死", "cardiology", ["US"], "cardiology", False),
    ("E11.9", "2型糖尿病，血糖控制不佳", "endocrinology", ["US"], "", True),
    ("J44.1", "慢阻肺急性加重", "respiratory", ["CT"], "respiratory", True),
    ("J18.9", "肺炎", "respiratory", ["CT"], "", True),
    ("C34.9", "肺部占位待查", "respiratory", ["CT", "ENDOSCOPY"], "", False),
    ("M17.9", "膝关节病", "orthopedics", ["MRI"], "", True),
    ("S72.0", "股骨颈骨折", "orthopedics", ["CT"], "orthopedics", False),
    ("K25.9", "胃溃疡", "endocrinology", ["ENDOSCOPY"], "", True),
    ("G45.9", "短暂性脑缺血发作", "neurology", ["CT"], "", False),
]
SURNAMES = "王李张刘陈杨赵黄周吴徐孙马朱胡郭何高林罗"
GIVEN = "秀英桂兰建国志强玉梅海燕春华德明丽娟文杰"
URGENCIES = ((common.URGENCY_EMERGENCY, 0.05), (common.URGENCY_URGENT, 0.25), (common.URGENCY_ROUTINE, 0.70))


def pdate(d: date) -> common.Date:
    return common.Date(year=d.year, month=d.month, day=d.day)


def id_number(rng: random.Random) -> str:
    born = f"{rng.randint(1940, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    first17 = f"622401{born}{rng.randint(0, 99):02d}{rng.randint(0, 9)}"
    return first17 + id_check_digit(first17)


def patient(rng: random.Random, wechat_share: float = 0.6) -> api.PatientInput:
    name = rng.choice(SURNAMES) + rng.choice(GIVEN) + rng.choice(GIVEN)
    mobile = f"13{rng.randint(0, 8)}{rng.randrange(10**8):08d}"
    openid = ("oDemo" + uuid.UUID(int=rng.getrandbits(128)).hex)[:28] if rng.random() < wechat_share else ""
    return api.PatientInput(display_name=name, id_number=id_number(rng), mobile=mobile, wechat_openid=openid)


def up_referral(rng: random.Random, clinic: str, hospital: str, today: date, *,
                with_admission: bool = True) -> tuple[api.CreateReferralRequest, dict]:
    """One clinic's up-referral; returns the request and what the simulation needs to know."""
    code, text, dept, exams, ward, catalogue = rng.choice(CASES)
    urgency = rng.choices([u for u, _ in URGENCIES], [w for _, w in URGENCIES])[0]
    needs = [rtypes.ResourceNeed(need_id="consult", consultation=rtypes.ConsultationNeed(
        department=dept, expert=rng.random() < 0.3))]
    wanted = exams[: rng.randint(0, len(exams))]
    needs += [rtypes.ResourceNeed(need_id=f"exam{i}", exam=rtypes.ExamNeed(modality=m, body_part=""))
              for i, m in enumerate(wanted)]
    if with_admission and ward and rng.random() < 0.35:
        needs.append(rtypes.ResourceNeed(need_id="admit", admission=rtypes.AdmissionNeed(
            department=ward, expected_nights=rng.randint(3, 8))))
    # 结果互认: a third of the patients bring a recent result of an exam they would need.
    results = []
    if wanted and rng.random() < 0.33:
        results.append(api.PriorResult(exam_type=wanted[0], result_date=pdate(today - timedelta(days=rng.randint(1, 10))),
                                       institution_id=clinic, reference=f"RPT-{rng.randrange(10**6):06d}",
                                       summary="合成数据"))
    first = 0 if urgency != common.URGENCY_ROUTINE else rng.randint(1, 3)
    days = [today + timedelta(days=first + k) for k in range(rng.randint(3, 8))]
    referral = api.Referral(
        direction=rtypes.DIRECTION_UP, receiving_institution_id=hospital, urgency=urgency,
        green_channel=urgency == common.URGENCY_EMERGENCY, diagnosis_code=code, diagnosis_text=text,
        department=dept, clinical_summary="合成数据：乡镇卫生院初诊", purpose=rtypes.REFERRAL_PURPOSE_DIAGNOSIS,
        justification="基层无相应检查设备，需上级医院明确诊断" if catalogue else "",
        needs=needs, available_dates=[pdate(d) for d in days], prior_results=results,
        consent=api.Consent(given=True, method="签字"))
    request = api.CreateReferralRequest(referral=referral, patient=patient(rng), request_id=uuid.UUID(
        int=rng.getrandbits(128)).hex, deductible_paid_fen=rng.choice([0, 0, 30000, 50000]))
    return request, {"urgency": urgency, "catalogue": catalogue, "department": dept}
