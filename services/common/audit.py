"""Audit of patient-data access: one append-only row per read or change.

Written in the same transaction as the change (or, for a read, right before the data
is returned), so a call that returned patient data always left its row.
"""
from __future__ import annotations

import asyncpg
import structlog

from services.common.auth import Caller


def _request_id() -> str:
    return str(structlog.contextvars.get_contextvars().get("request_id", ""))


async def record(conn: asyncpg.Connection, caller: Caller, action: str, resource: str,
                 patient_id: str | None) -> None:
    await conn.execute(
        "INSERT INTO audit_log (subject, institution_id, role, action, resource, patient_id, request_id) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)", *values(caller, action, resource, patient_id))


def values(caller: Caller, action: str, resource: str, patient_id: str | None) -> tuple:
    """The row `record` writes (subject, institution_id, role, action, resource, patient_id,
    request_id), for a use case that inserts it in a combined statement of its transaction."""
    return (caller.subject, caller.institution_id, caller.role.value, action, resource, patient_id,
            _request_id())


async def record_many(conn: asyncpg.Connection, caller: Caller, action: str,
                      items: list[tuple[str, str | None]]) -> None:
    """One row per patient a list call returned."""
    if not items:
        return
    request_id = _request_id()
    await conn.executemany(
        "INSERT INTO audit_log (subject, institution_id, role, action, resource, patient_id, request_id) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [(caller.subject, caller.institution_id, caller.role.value, action, resource, patient, request_id)
         for resource, patient in items])


def rpc_method() -> str:
    """The gRPC method being served (bound by the edge interceptor), so a use case shared
    by several methods audits under the name the caller used."""
    rpc = str(structlog.contextvars.get_contextvars().get("rpc", ""))
    return rpc.rpartition("/")[2] or "internal"


async def record_with_reason(conn: asyncpg.Connection, caller: Caller, action: str, resource: str,
                             patient_id: str | None, reason: str) -> None:
    """One row for a call that had to give a reason (e.g. revealing full identifiers)."""
    await conn.execute(
        "INSERT INTO audit_log (subject, institution_id, role, action, resource, patient_id, request_id, reason) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        caller.subject, caller.institution_id, caller.role.value, action, resource, patient_id,
        _request_id(), reason)
