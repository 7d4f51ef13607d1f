"""Consortium administration: membership, settings, the disease catalogue."""
from __future__ import annotations

from services.common.auth import Caller, Role
from services.common.errors import AlreadyExists, NotFound, PermissionDenied, Violations
from services.referral.adapters import repository as repo
from services.referral.domain.model import ConsortiumSettings, Institution, Level
from services.referral.domain.rules import Catalogue, CatalogueEntry
from services.referral.service_layer import membership
from services.referral.service_layer.services import ReferralService


def _office_of(caller: Caller, consortium_id: str) -> None:
    caller.require(Role.CONSORTIUM_OFFICE)
    if (caller.consortium_id or caller.institution_id) != consortium_id:
        raise PermissionDenied("只能管理本医联体", reason="OTHER_CONSORTIUM")


async def _readable(svc: ReferralService, conn, caller: Caller, consortium_id: str) -> None:
    scope = await svc.scope(conn, caller)
    if scope.consortium_id != consortium_id:
        raise NotFound(f"医联体 {consortium_id} 不存在", reason="CONSORTIUM_NOT_FOUND")


async def create_consortium(svc: ReferralService, caller: Caller, c: ConsortiumSettings) -> ConsortiumSettings:
    _office_of(caller, c.consortium_id)
    async with svc.pool.acquire() as conn:
        if not await repo.upsert_consortium(conn, c, create=True):
            raise AlreadyExists(f"医联体 {c.consortium_id} 已存在", reason="CONSORTIUM_EXISTS")
    return c


async def get_consortium(svc: ReferralService, caller: Caller, consortium_id: str) -> ConsortiumSettings:
    async with svc.pool.acquire() as conn:
        await _readable(svc, conn, caller, consortium_id)
        found = await repo.get_consortium(conn, consortium_id)
    if found is None:
        raise NotFound(f"医联体 {consortium_id} 不存在", reason="CONSORTIUM_NOT_FOUND")
    return found


async def update_consortium(svc: ReferralService, caller: Caller, consortium_id: str, paths: list[str],
                            new: ConsortiumSettings) -> ConsortiumSettings:
    _office_of(caller, consortium_id)
    async with svc.pool.acquire() as conn, conn.transaction():
        current = await repo.get_consortium(conn, consortium_id, for_update=True)
        if current is None:
            raise NotFound(f"医联体 {consortium_id} 不存在", reason="CONSORTIUM_NOT_FOUND")
        for path in paths:
            setattr(current, path, getattr(new, path))
        await repo.upsert_consortium(conn, current, create=False)
    return current


async def create_institution(svc: ReferralService, caller: Caller, i: Institution) -> Institution:
    _office_of(caller, i.consortium_id)
    violations = Violations()
    async with svc.pool.acquire() as conn, conn.transaction():
        if await repo.get_consortium(conn, i.consortium_id) is None:
            raise NotFound(f"医联体 {i.consortium_id} 不存在", reason="CONSORTIUM_NOT_FOUND")
        if i.level is Level.HOSPITAL:
            i.lead_hospital_id = i.lead_hospital_id or i.institution_id
        for field, other_id in (("institution.lead_hospital_id", i.lead_hospital_id),
                                ("institution.parent_institution_id", i.parent_institution_id)):
            if not other_id or other_id == i.institution_id:
                continue
            other = await repo.get_institution(conn, other_id)
            if other is None or other.consortium_id != i.consortium_id or other.level <= i.level:
                violations.add(field, "须为本医联体中级别更高的已登记机构")
        violations.check(bool(i.lead_hospital_id), "institution.lead_hospital_id", "基层机构须指定牵头医院")
        violations.raise_if_any()
        if not await repo.insert_institution(conn, i):
            raise AlreadyExists(f"机构 {i.institution_id} 已存在", reason="INSTITUTION_EXISTS")
        # Scheduling and notify authorize by membership: they learn it from this event.
        await membership.publish(conn, i)
    return i


async def get_institution(svc: ReferralService, caller: Caller, consortium_id: str, institution_id: str
                          ) -> Institution:
    async with svc.pool.acquire() as conn:
        await _readable(svc, conn, caller, consortium_id)
        found = await repo.get_institution(conn, institution_id)
    if found is None or found.consortium_id != consortium_id:
        raise NotFound(f"机构 {institution_id} 不存在", reason="INSTITUTION_NOT_FOUND")
    return found


async def list_institutions(svc: ReferralService, caller: Caller, consortium_id: str, after: str, limit: int
                            ) -> list[Institution]:
    async with svc.pool.acquire() as conn:
        await _readable(svc, conn, caller, consortium_id)
        return await repo.list_institutions(conn, consortium_id, after, limit)


async def create_catalogue(svc: ReferralService, caller: Caller, consortium_id: str, description: str,
                           entries: list[CatalogueEntry]) -> tuple[int, Catalogue]:
    _office_of(caller, consortium_id)
    async with svc.pool.acquire() as conn, conn.transaction():
        if await repo.get_consortium(conn, consortium_id) is None:
            raise NotFound(f"医联体 {consortium_id} 不存在", reason="CONSORTIUM_NOT_FOUND")
        version = await repo.insert_catalogue(conn, consortium_id, description, entries)
        return version, Catalogue(version, entries)


async def get_catalogue(svc: ReferralService, caller: Caller, consortium_id: str, version: str):
    async with svc.pool.acquire() as conn:
        await _readable(svc, conn, caller, consortium_id)
        number = await repo.latest_catalogue_version(conn, consortium_id) if version == "latest" else int(version)
        meta = await repo.catalogue_meta(conn, consortium_id, number)
        if meta is None:
            raise NotFound(f"病种目录版本 {version} 不存在", reason="CATALOGUE_NOT_FOUND")
        catalogue = await repo.catalogue(conn, consortium_id, number)
    return meta, catalogue

