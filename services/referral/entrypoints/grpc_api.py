"""gRPC servicer: proto in, use case, proto out. No rules live here."""
from __future__ import annotations

import asyncio

import grpc

from referral.v1 import referral_service_pb2 as api, referral_service_pb2_grpc as api_grpc
from services.common.auth import current_caller
from services.common.errors import FieldViolation, InvalidArgument, Violations
from services.referral.adapters import edit_requests, mapping, repository as repo, requests
from services.referral.domain import validators as v
from services.referral.domain.model import Completion, ConsortiumSettings, Direction, Institution, Level, Purpose
from services.referral.domain.rules import CatalogueEntry
from services.referral.entrypoints.watch import ChangeFeed
from services.referral.service_layer import admin, editing, queries, retention
from services.referral.service_layer.services import ReferralService

_CONSORTIUM_FIELDS = {"display_name", "emergency_acceptance_hours", "urgent_acceptance_hours",
                      "routine_acceptance_hours", "exam_validities", "emergency_scheduling_hours",
                      "urgent_scheduling_hours", "routine_scheduling_hours"}
_SCHEDULING_DEFAULTS = {"emergency_scheduling_hours": 4, "urgent_scheduling_hours": 48,
                        "routine_scheduling_hours": 168}


class ReferralServicer(api_grpc.ReferralServiceServicer):
    def __init__(self, svc: ReferralService, feed: ChangeFeed) -> None:
        self.svc = svc
        self.feed = feed

    def _out(self, referral) -> api.Referral:
        today = self.svc.clock().date()
        # A create already built this view for its change-log row: the same referral, version and day.
        view = getattr(referral, "_response_view", None)
        if view is not None and view[0] == today and view[1] == referral.version:
            return view[2]
        return mapping.referral_proto(referral, today)

    # --- referrals ---------------------------------------------------------------------

    async def CreateReferral(self, request, context):
        caller = current_caller()
        cmd = requests.create_referral(request, caller.subject, self.svc.clock())
        return self._out(await self.svc.create(caller, cmd))

    async def GetReferral(self, request, context):
        return self._out(await self.svc.get(current_caller(), requests.parse_name(request.name)))

    async def ListReferrals(self, request, context):
        f = requests.list_filter(request)
        rows, more = await self.svc.list(current_caller(), f)
        token = requests.page_token(request, rows[-1].created_at, rows[-1].id) if more else ""
        return api.ListReferralsResponse(referrals=[self._out(r) for r in rows], next_page_token=token)

    async def SubmitReferral(self, request, context):
        caller = current_caller()
        violations = Violations()
        consent = requests.consent_input(request.consent, caller.subject, self.svc.clock(), violations, "consent")
        violations.raise_if_any()
        return self._out(await self.svc.submit(caller, requests.parse_name(request.name), consent))

    async def AcceptReferral(self, request, context):
        return self._out(await self.svc.accept(current_caller(), requests.parse_name(request.name), request.note))

    async def RejectReferral(self, request, context):
        return self._out(await self.svc.reject(current_caller(), requests.parse_name(request.name), request.reason))

    async def ReturnReferral(self, request, context):
        return self._out(await self.svc.return_to_sender(current_caller(), requests.parse_name(request.name),
                                                         request.reason))

    async def ResubmitReferral(self, request, context):
        violations = Violations()
        results = requests.prior_results(request.prior_results, violations, "prior_results", self.svc.clock().date())
        requests.check_text(violations, request.additional_information, "additional_information")
        violations.raise_if_any()
        return self._out(await self.svc.resubmit(current_caller(), requests.parse_name(request.name),
                                                 request.additional_information, results, request.justification))

    async def CancelReferral(self, request, context):
        return self._out(await self.svc.cancel(current_caller(), requests.parse_name(request.name), request.reason))

    async def WithdrawConsent(self, request, context):
        return self._out(await self.svc.withdraw_consent(current_caller(), requests.parse_name(request.name),
                                                         request.reason))

    async def RecordArrival(self, request, context):
        return self._out(await self.svc.record_arrival(current_caller(), requests.parse_name(request.name)))

    async def RecordNoShow(self, request, context):
        return self._out(await self.svc.record_no_show(current_caller(), requests.parse_name(request.name),
                                                       request.note))

    async def CompleteReferral(self, request, context):
        caller = current_caller()
        violations = Violations()
        c = request.completion
        requests.check_text(violations, c.findings, "completion.findings", required=True)
        requests.check_text(violations, c.treatment_summary, "completion.treatment_summary")
        requests.check_text(violations, c.recommendations, "completion.recommendations")
        violations.raise_if_any()
        proposal = requests.proposal(request, caller.subject, self.svc.clock())
        completion = Completion(c.findings, c.treatment_summary, c.recommendations)
        return self._out(await self.svc.complete(caller, requests.parse_name(request.name), completion, proposal))

    async def UpdateReferral(self, request, context):
        caller = current_caller()
        referral_id, changes = edit_requests.update_referral(request, caller.subject, self.svc.clock())
        return self._out(await editing.update(self.svc, caller, referral_id, changes))

    async def RebookReferral(self, request, context):
        return self._out(await editing.rebook(self.svc, current_caller(), requests.parse_name(request.name),
                                              request.reason))

    async def RevealPatientContact(self, request, context):
        return await editing.reveal_contact(self.svc, current_caller(), requests.parse_name(request.name),
                                            request.reason)

    async def WatchReferrals(self, request, context):
        caller = current_caller()
        cursor = request.cursor.strip()
        # A cursor is a change-log sequence (bigint).
        start = requests.decimal(cursor, requests.INT8_MAX) if cursor else None
        if cursor and start is None:
            raise InvalidArgument(FieldViolation("cursor", "无效的游标"))
        async with self.svc.pool.acquire() as conn:
            scope = await self.svc.scope(conn, caller)
            after = start if start is not None else await repo.last_change_seq(conn, scope.consortium_id)
            if start == 0:
                # "0": from the beginning of the retained history.
                after = await retention.purged_through(conn, scope.consortium_id)
        while True:
            ticket = self.feed.ticket()
            changes, after, more = await self.svc.changes_after(caller, scope, after)
            for change in changes:
                yield change
            if more:
                await asyncio.sleep(0)
            else:
                await self.feed.wait(ticket)

    async def CheckReferralRules(self, request, context):
        caller = current_caller()
        today = self.svc.clock().date()
        violations = Violations()
        if request.id_number and v.id_number_error(request.id_number, today):
            violations.add("id_number", v.id_number_error(request.id_number, today))
        if v.icd10_error(request.diagnosis_code):
            violations.add("diagnosis_code", v.icd10_error(request.diagnosis_code))
        violations.check(request.direction in (1, 2), "direction", "须为上转或下转")
        violations.check(bool(request.receiving_institution_id), "receiving_institution_id", "必填")
        needs = requests.needs(request.needs, violations, "needs")
        results = requests.prior_results(request.prior_results, violations, "prior_results", today)
        violations.raise_if_any()
        return await queries.check_rules(
            self.svc, caller, id_number=v.normalise_id_number(request.id_number),
            code=v.normalise_icd10(request.diagnosis_code), direction=Direction(request.direction),
            receiving_id=request.receiving_institution_id, needs=needs, results=results,
            purpose=Purpose(request.purpose) if request.purpose in (0, 1, 2, 3, 4) else Purpose.UNSPECIFIED)

    async def GetReferralStats(self, request, context):
        consortium_id = requests.parse_consortium_name(request.consortium, "consortium")
        violations = Violations()
        start, end = mapping.from_pdate(request.start_date), mapping.from_pdate(request.end_date)
        violations.check(start is not None, "start_date", "日期无效")
        violations.check(end is not None, "end_date", "日期无效")
        if start and end:
            violations.check(start <= end and (end - start).days <= 366, "end_date", "结束日期须在开始日期之后一年内")
        violations.raise_if_any()
        return await queries.stats(self.svc, current_caller(), consortium_id, start, end)

    async def UpdateChronicCareStatus(self, request, context):
        cmd = requests.chronic_update(request, self.svc.clock().date())
        return await self.svc.update_chronic_care(current_caller(), cmd)

    # --- administration --------------------------------------------------------------------

    @staticmethod
    def _settings(consortium_id: str, c: api.Consortium, violations: Violations,
                  paths: list[str] | None = None) -> ConsortiumSettings:
        requests.check_text(violations, c.display_name, "consortium.display_name", limit=100,
                            required=paths is None or "display_name" in paths)
        for name in ("emergency_acceptance_hours", "urgent_acceptance_hours", "routine_acceptance_hours",
                     *_SCHEDULING_DEFAULTS):
            value = getattr(c, name)
            violations.check(0 <= value <= 24 * 30, f"consortium.{name}", "应为0-720小时（0表示默认值）")
        validity = {}
        for i, item in enumerate(c.exam_validities):
            requests.check_text(violations, item.exam_type, f"consortium.exam_validities[{i}].exam_type",
                                required=True, limit=40)
            violations.check(1 <= item.validity_days <= 3650, f"consortium.exam_validities[{i}].validity_days",
                             "应为1-3650天")
            validity[item.exam_type.strip().upper()] = item.validity_days
        return ConsortiumSettings(consortium_id, c.display_name.strip(), c.emergency_acceptance_hours or 2,
                                  c.urgent_acceptance_hours or 24, c.routine_acceptance_hours or 72, validity,
                                  **{k: getattr(c, k) or d for k, d in _SCHEDULING_DEFAULTS.items()})

    async def CreateConsortium(self, request, context):
        violations = Violations()
        if v.token_error(request.consortium_id):
            violations.add("consortium_id", v.token_error(request.consortium_id, "医联体编号"))
        settings = self._settings(request.consortium_id, request.consortium, violations)
        violations.raise_if_any()
        return mapping.consortium_proto(await admin.create_consortium(self.svc, current_caller(), settings))

    async def GetConsortium(self, request, context):
        consortium_id = requests.parse_consortium_name(request.name, "name")
        return mapping.consortium_proto(await admin.get_consortium(self.svc, current_caller(), consortium_id))

    async def UpdateConsortium(self, request, context):
        consortium_id = requests.parse_consortium_name(request.consortium.name, "consortium.name")
        violations = Violations()
        paths = list(request.update_mask.paths) or sorted(_CONSORTIUM_FIELDS)
        for path in paths:
            violations.check(path in _CONSORTIUM_FIELDS, "update_mask", f"不能更新字段 {path}")
        settings = self._settings(consortium_id, request.consortium, violations, paths)
        violations.raise_if_any()
        attrs = ["exam_validity" if p == "exam_validities" else p for p in paths]
        return mapping.consortium_proto(await admin.update_consortium(self.svc, current_caller(), consortium_id,
                                                                      attrs, settings))

    async def CreateInstitution(self, request, context):
        consortium_id = requests.parse_consortium_name(request.parent, "parent")
        violations = Violations()
        i = request.institution
        if v.token_error(request.institution_id):
            violations.add("institution_id", v.token_error(request.institution_id, "机构编号"))
        requests.check_text(violations, i.display_name, "institution.display_name", required=True, limit=100)
        violations.check(i.level in (1, 2, 3), "institution.level", "须为村、乡镇/社区或医院")
        violations.check(0 <= i.distance_km <= 2000, "institution.distance_km", "应为0-2000公里")
        for name in ("lead_hospital_id", "parent_institution_id"):
            if getattr(i, name) and v.token_error(getattr(i, name)):
                violations.add(f"institution.{name}", v.token_error(getattr(i, name), "机构编号"))
        violations.raise_if_any()
        created = await admin.create_institution(self.svc, current_caller(), Institution(
            request.institution_id, consortium_id, i.display_name.strip(), Level(i.level), i.lead_hospital_id,
            i.parent_institution_id, i.distance_km, i.address))
        return mapping.institution_proto(created)

    async def GetInstitution(self, request, context):
        consortium_id, institution_id = requests.parse_child_name(request.name, "institutions")
        return mapping.institution_proto(await admin.get_institution(self.svc, current_caller(), consortium_id,
                                                                     institution_id))

    async def ListInstitutions(self, request, context):
        consortium_id = requests.parse_consortium_name(request.parent, "parent")
        violations = Violations()
        size = requests.page_size(violations, request.page_size, default=100, maximum=500)
        violations.raise_if_any()
        rows = await admin.list_institutions(self.svc, current_caller(), consortium_id, request.page_token, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return api.ListInstitutionsResponse(institutions=[mapping.institution_proto(i) for i in rows],
                                            next_page_token=rows[-1].institution_id if more else "")

    async def CreateDiseaseCatalogue(self, request, context):
        consortium_id = requests.parse_consortium_name(request.parent, "parent")
        violations = Violations()
        entries, seen = [], set()
        cat = request.disease_catalogue
        violations.check(len(cat.entries) > 0, "disease_catalogue.entries", "病种目录不能为空")
        for i, e in enumerate(cat.entries):
            path = f"disease_catalogue.entries[{i}]"
            if v.icd10_error(e.code):
                violations.add(f"{path}.code", v.icd10_error(e.code))
            requests.check_text(violations, e.display_name, f"{path}.display_name", required=True, limit=100)
            violations.check(e.level in (1, 2, 3), f"{path}.level", "须为村、乡镇/社区或医院")
            code = v.normalise_icd10(e.code)
            violations.check(code not in seen, f"{path}.code", "重复")
            seen.add(code)
            if e.level in (1, 2, 3):
                entries.append(CatalogueEntry(code, e.display_name.strip(), Level(e.level)))
        requests.check_text(violations, cat.description, "disease_catalogue.description", limit=500)
        violations.raise_if_any()
        version, catalogue = await admin.create_catalogue(self.svc, current_caller(), consortium_id,
                                                          cat.description, entries)
        return self._catalogue(consortium_id, version, catalogue, cat.description, None, False)

    async def GetDiseaseCatalogue(self, request, context):
        consortium_id, version = requests.parse_child_name(request.name, "diseaseCatalogues")
        # Catalogue versions are integer (int4) columns.
        if version != "latest" and requests.decimal(version, requests.INT4_MAX) is None:
            raise InvalidArgument(FieldViolation("name", "版本应为数字或 latest"))
        meta, catalogue = await admin.get_catalogue(self.svc, current_caller(), consortium_id, version)
        return self._catalogue(consortium_id, meta["version"], catalogue, meta["description"], meta["created_at"],
                               request.summary_only)

    @staticmethod
    def _catalogue(consortium_id, version, catalogue, description, created, summary_only) -> api.DiseaseCatalogue:
        return api.DiseaseCatalogue(
            name=f"consortiums/{consortium_id}/diseaseCatalogues/{version}", version=version,
            description=description, create_time=mapping.ts(created),
            entries=[] if summary_only else [api.DiseaseEntry(code=e.code, display_name=e.name, level=int(e.level))
                                             for e in catalogue.entries()])


def registrar(servicer: ReferralServicer):
    def register(server: grpc.aio.Server) -> list[str]:
        api_grpc.add_ReferralServiceServicer_to_server(servicer, server)
        return [api.DESCRIPTOR.services_by_name["ReferralService"].full_name]
    return register
