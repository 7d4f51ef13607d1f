"""The demo consortium for `make run`, loaded through the gRPC admin API (idempotent).

DEMO: one lead hospital (示范县人民医院), twelve township centres 20-170 km away, a few
village clinics, the 92-disease township catalogue and exam validity windows.
The consortium office's token names the consortium itself as its institution.
"""
from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import grpc

from referral.v1 import referral_service_pb2 as api, referral_service_pb2_grpc as api_grpc

CONSORTIUM = "DEMO"
HOSPITAL = "HOSP01"
CATALOGUE_FILE = Path(__file__).with_name("data") / "catalogue_township.csv"
LEVELS = {"village": 1, "township": 2, "hospital": 3}
TOWNSHIPS = ["城关镇卫生院", "青石镇卫生院", "白沙乡卫生院", "柳河镇卫生院", "红旗乡卫生院", "太平镇卫生院",
             "新华乡卫生院", "东风镇卫生院", "长岭乡卫生院", "永安镇卫生院", "黄花乡卫生院", "草原乡卫生院"]
DISTANCES_KM = [20, 28, 35, 46, 58, 64, 77, 89, 102, 118, 143, 170]
VILLAGES = [("VILLAGE01", "城关镇东村卫生室", "CLINIC01", 24), ("VILLAGE02", "城关镇西村卫生室", "CLINIC01", 26),
            ("VILLAGE03", "青石镇石桥村卫生室", "CLINIC02", 33), ("VILLAGE04", "草原乡牧场村卫生室", "CLINIC12", 176)]
EXAM_VALIDITY = {"CT": 30, "MRI": 30, "DR": 30, "US": 14, "ECG": 7, "ENDOSCOPY": 90, "BLOOD_ROUTINE": 7,
                 "BIOCHEMISTRY": 7, "URINE_ROUTINE": 7, "HBA1C": 90}


def catalogue_entries(path: Path = CATALOGUE_FILE) -> list[api.DiseaseEntry]:
    with path.open(encoding="utf-8") as f:
        return [api.DiseaseEntry(code=row["code"], display_name=row["display_name"], level=LEVELS[row["level"]])
                for row in csv.DictReader(f)]


async def _ignore_exists(call) -> None:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise


async def load_demo(address: str, token_for: Callable[[str, str], str]) -> None:
    token = token_for(CONSORTIUM, "consortium_office")
    md = (("authorization", token if token.lower().startswith("bearer ") else f"Bearer {token}"),)
    parent = f"consortiums/{CONSORTIUM}"
    async with grpc.aio.insecure_channel(address) as channel:
        stub = api_grpc.ReferralServiceStub(channel)
        await _ignore_exists(stub.CreateConsortium(api.CreateConsortiumRequest(
            consortium_id=CONSORTIUM, consortium=api.Consortium(
                display_name="示范县医共体", emergency_acceptance_hours=2, urgent_acceptance_hours=24,
                routine_acceptance_hours=72,
                exam_validities=[api.ExamValidity(exam_type=k, validity_days=v) for k, v in EXAM_VALIDITY.items()])),
            metadata=md))
        members = [(HOSPITAL, api.Institution(display_name="示范县人民医院", level=3, address="示范县人民路1号"))]
        members += [(f"CLINIC{i + 1:02d}", api.Institution(display_name=f"示范县{name}", level=2,
                                                           lead_hospital_id=HOSPITAL, distance_km=km))
                    for i, (name, km) in enumerate(zip(TOWNSHIPS, DISTANCES_KM))]
        members += [(vid, api.Institution(display_name=name, level=1, lead_hospital_id=HOSPITAL,
                                          parent_institution_id=township, distance_km=km))
                    for vid, name, township, km in VILLAGES]
        for institution_id, institution in members:
            await _ignore_exists(stub.CreateInstitution(api.CreateInstitutionRequest(
                parent=parent, institution_id=institution_id, institution=institution), metadata=md))
        try:
            await stub.GetDiseaseCatalogue(api.GetDiseaseCatalogueRequest(
                name=f"{parent}/diseaseCatalogues/latest", summary_only=True), metadata=md)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            await stub.CreateDiseaseCatalogue(api.CreateDiseaseCatalogueRequest(
                parent=parent, disease_catalogue=api.DiseaseCatalogue(
                    description="乡镇卫生院诊治病种目录（92种，合成示例）", entries=catalogue_entries())), metadata=md)
