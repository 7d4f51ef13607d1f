"""A small consortium per test (unique ids), and helpers to make referrals in it."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta

import grpc
import pytest

from common.v1 import types_pb2 as common
from referral.v1 import referral_service_pb2 as api, types_pb2 as rtypes
from tests.unit.referral import fakes

CATALOGUE = [("I10", "原发性高血压", 1), ("E11", "2型糖尿病", 2), ("J18", "肺炎", 2), ("I63", "脑梗死", 3)]


def pdate(d: date) -> common.Date:
    return common.Date(year=d.year, month=d.month, day=d.day)


@dataclass
class World:
    stack: object
    stub: object
    consortium: str
    hospital: str
    clinics: list[str]
    village: str
    ids: dict = field(default_factory=dict)

    def md(self, institution: str, role: str = "") -> tuple:
        if not role:
            role = "referral_desk" if institution == self.hospital else "clinic_doctor"
        return self.stack.metadata(institution, role)

    @property
    def office(self) -> tuple:
        return self.stack.metadata(self.consortium, "consortium_office")

    def request(self, *, clinic: str = "", receiver: str = "", direction: int = 1, code: str = "I63",
                draft: bool = False, consent: bool = True, needs=None, results=None, **extra
                ) -> api.CreateReferralRequest:
        soon = date.today() + timedelta(days=3)
        referral = api.Referral(
            direction=direction, receiving_institution_id=receiver or self.hospital, urgency=3,
            diagnosis_code=code, diagnosis_text="测试诊断", department="neurology", clinical_summary="合成数据",
            needs=needs if needs is not None else [rtypes.ResourceNeed(
                need_id="c1", consultation=rtypes.ConsultationNeed(department="neurology"))],
            available_dates=[pdate(soon), pdate(soon + timedelta(days=1))], prior_results=results or [],
            consent=api.Consent(given=consent, method="签字"), **extra)
        patient = api.PatientInput(display_name="张测华", id_number=fakes.id_number(), mobile=fakes.mobile())
        return api.CreateReferralRequest(referral=referral, patient=patient, request_id=uuid.uuid4().hex,
                                         draft=draft)

    async def create(self, clinic: str = "", **kw) -> api.Referral:
        clinic = clinic or self.clinics[0]
        return await self.stub.CreateReferral(self.request(clinic=clinic, **kw), metadata=self.md(clinic))

    async def call(self, method: str, institution: str, name: str, **fields) -> api.Referral:
        request_type = getattr(api, f"{method}Request")
        return await getattr(self.stub, method)(request_type(name=name, **fields), metadata=self.md(institution))


async def new_world(stack, stub, tag: str) -> World:
    consortium = f"C{tag}"
    office = stack.metadata(consortium, "consortium_office")
    await stub.CreateConsortium(api.CreateConsortiumRequest(consortium_id=consortium, consortium=api.Consortium(
        display_name=f"测试医共体{tag}", exam_validities=[api.ExamValidity(exam_type="CT", validity_days=30),
                                                       api.ExamValidity(exam_type="BLOOD_ROUTINE", validity_days=7)])),
        metadata=office)
    parent = f"consortiums/{consortium}"
    hospital = f"H{tag}"
    await stub.CreateInstitution(api.CreateInstitutionRequest(parent=parent, institution_id=hospital,
                                 institution=api.Institution(display_name="测试县人民医院", level=3)), metadata=office)
    clinics = [f"K{tag}{i}" for i in (1, 2)]
    for i, clinic in enumerate(clinics):
        await stub.CreateInstitution(api.CreateInstitutionRequest(parent=parent, institution_id=clinic,
                                     institution=api.Institution(display_name=f"测试乡镇卫生院{i}", level=2,
                                                                 lead_hospital_id=hospital, distance_km=20 + i)),
                                     metadata=office)
    village = f"V{tag}"
    await stub.CreateInstitution(api.CreateInstitutionRequest(parent=parent, institution_id=village,
                                 institution=api.Institution(display_name="测试村卫生室", level=1,
                                                             lead_hospital_id=hospital,
                                                             parent_institution_id=clinics[0])), metadata=office)
    await stub.CreateDiseaseCatalogue(api.CreateDiseaseCatalogueRequest(parent=parent, disease_catalogue=api.DiseaseCatalogue(
        entries=[api.DiseaseEntry(code=c, display_name=n, level=lvl) for c, n, lvl in CATALOGUE])), metadata=office)
    return World(stack, stub, consortium, hospital, clinics, village)


async def expect_error(code: grpc.StatusCode, coro) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    assert info.value.code() == code, info.value.details()
    return info.value
