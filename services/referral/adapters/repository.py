"""asyncpg repository: the aggregate, membership, catalogue, episodes, change log.

All functions take a connection so the service layer owns the transaction.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.common.errors import Aborted
from services.referral.adapters.codec import from_plain, to_plain
from services.referral.domain.model import (
    ConsortiumSettings, Institution, Level, Referral, State, Transition)
from services.referral.domain.rules import EMPTY_CATALOGUE, Catalogue, CatalogueEntry

_COLUMNS = ("referral_id", "consortium_id", "direction", "state", "sending_institution_id",
            "receiving_institution_id", "hospital_id", "urgency", "department", "diagnosis_code",
            "patient_id", "episode_id", "request_id", "created_at", "updated_at", "submitted_at",
            "accepted_at", "scheduled_at", "version", "body")


def _row_values(r: Referral) -> list:
    body = to_plain(r)
    body.pop("history", None)
    return [r.id, r.consortium_id, int(r.direction), int(r.state), r.sending_institution_id,
            r.receiving_institution_id, r.hospital_id, int(r.urgency), r.department, r.diagnosis_code,
            r.patient.patient_id, r.billing.episode_id if r.billing else "", r.request_id, r.created_at,
            r.updated_at or r.created_at, r.submitted_at, r.accepted_at, r.scheduled_at, r.version,
            json.dumps(body, ensure_ascii=False)]


def _from_row(row: asyncpg.Record, history: list[Transition]) -> Referral:
    referral: Referral = from_plain(Referral, json.loads(row["body"]))
    referral.version = row["version"]
    referral.history = history
    referral._persisted_history = len(history)  # type: ignore[attr-defined]
    return referral


async def _history(conn: asyncpg.Connection, referral_ids: list[str]) -> dict[str, list[Transition]]:
    rows = await conn.fetch(
        "SELECT referral_id, from_state, to_state, actor, actor_institution_id, reason, at "
        "FROM referral_transitions WHERE referral_id = ANY($1::text[]) ORDER BY id", referral_ids)
    out: dict[str, list[Transition]] = {rid: [] for rid in referral_ids}
    for row in rows:
        out[row["referral_id"]].append(Transition(
            State(row["from_state"]) if row["from_state"] is not None else None, State(row["to_state"]),
            row["actor"], row["actor_institution_id"], row["reason"], row["at"]))
    return out


async def insert_referral(conn: asyncpg.Connection, referral: Referral) -> bool:
    """False when the caller's institution already used this request id."""
    referral.version = 1
    placeholders = ", ".join(f"${i}" for i in range(1, len(_COLUMNS) + 1))
    inserted = await conn.fetchval(
        f"INSERT INTO referrals ({', '.join(_COLUMNS)}) VALUES ({placeholders}) "
        "ON CONFLICT (sending_institution_id, request_id) DO NOTHING RETURNING true", *_row_values(referral))
    if not inserted:
        return False
    referral._persisted_history = 0  # type: ignore[attr-defined]
    await _insert_history(conn, referral)
    return True


async def _insert_history(conn: asyncpg.Connection, referral: Referral) -> None:
    done = getattr(referral, "_persisted_history", 0)
    fresh = referral.history[done:]
    if fresh:
        await conn.executemany(
            "INSERT INTO referral_transitions (referral_id, from_state, to_state, actor, actor_institution_id, "
            "reason, at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [(referral.id, int(t.from_state) if t.from_state else None, int(t.to_state), t.actor,
              t.actor_institution_id, t.reason, t.at) for t in fresh])
    referral._persisted_history = len(referral.history)  # type: ignore[attr-defined]


async def save(conn: asyncpg.Connection, referral: Referral) -> None:
    values = _row_values(referral)
    sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(_COLUMNS, start=1)
                     if c not in ("referral_id", "version"))
    # The version check backs up the row lock: a stale copy can never overwrite.
    updated = await conn.fetchval(
        f"UPDATE referrals SET {sets}, version = version + 1 WHERE referral_id = $1 AND version = $19 "
        "RETURNING version", *values)
    if updated is None:
        raise Aborted("转诊单已被并发修改，请刷新后重试", reason="CONCURRENT_MODIFICATION")
    referral.version = updated
    await _insert_history(conn, referral)


async def get(conn: asyncpg.Connection, referral_id: str, *, for_update: bool = False) -> Referral | None:
    row = await conn.fetchrow(
        "SELECT version, body FROM referrals WHERE referral_id = $1" + (" FOR UPDATE" if for_update else ""),
        referral_id)
    if row is None:
        return None
    return _from_row(row, (await _history(conn, [referral_id]))[referral_id])


async def get_by_request(conn: asyncpg.Connection, sending_institution_id: str, request_id: str) -> Referral | None:
    referral_id = await conn.fetchval(
        "SELECT referral_id FROM referrals WHERE sending_institution_id = $1 AND request_id = $2",
        sending_institution_id, request_id)
    return await get(conn, referral_id) if referral_id else None


async def list_referrals(conn: asyncpg.Connection, where: list[str], args: list, limit: int) -> list[Referral]:
    sql = (f"SELECT referral_id, version, body FROM referrals WHERE {' AND '.join(where) or 'true'} "
           f"ORDER BY created_at DESC, referral_id DESC LIMIT {int(limit)}")
    rows = await conn.fetch(sql, *args)
    history = await _history(conn, [r["referral_id"] for r in rows])
    return [_from_row(r, history[r["referral_id"]]) for r in rows]


# --- change log --------------------------------------------------------------------------


async def append_change(conn: asyncpg.Connection, referral: Referral, payload: bytes) -> int:
    # Taken last in the transaction: the row lock orders commits within a consortium.
    seq = await conn.fetchval(
        "UPDATE consortiums SET change_seq = change_seq + 1 WHERE consortium_id = $1 RETURNING change_seq",
        referral.consortium_id)
    await conn.execute(
        "INSERT INTO referral_changes (consortium_id, seq, referral_id, sending_institution_id, "
        "receiving_institution_id, payload) VALUES ($1, $2, $3, $4, $5, $6)",
        referral.consortium_id, seq, referral.id, referral.sending_institution_id,
        referral.receiving_institution_id, payload)
    return seq


async def changes_after(conn: asyncpg.Connection, consortium_id: str, after: int, institution_id: str | None,
                        limit: int = 200) -> list[asyncpg.Record]:
    if institution_id is None:
        return await conn.fetch(
            "SELECT seq, payload FROM referral_changes WHERE consortium_id = $1 AND seq > $2 "
            "ORDER BY seq LIMIT $3", consortium_id, after, limit)
    return await conn.fetch(
        "SELECT seq, payload FROM referral_changes WHERE consortium_id = $1 AND seq > $2 "
        "AND (sending_institution_id = $3 OR receiving_institution_id = $3) ORDER BY seq LIMIT $4",
        consortium_id, after, institution_id, limit)


async def last_change_seq(conn: asyncpg.Connection, consortium_id: str) -> int:
    return await conn.fetchval("SELECT change_seq FROM consortiums WHERE consortium_id = $1", consortium_id) or 0


# --- membership ----------------------------------------------------------------------------


def _institution(row: asyncpg.Record) -> Institution:
    return Institution(row["institution_id"], row["consortium_id"], row["display_name"], Level(row["level"]),
                       row["lead_hospital_id"], row["parent_institution_id"], row["distance_km"], row["address"])


async def get_institution(conn: asyncpg.Connection, institution_id: str) -> Institution | None:
    row = await conn.fetchrow("SELECT * FROM institutions WHERE institution_id = $1", institution_id)
    return _institution(row) if row else None


async def list_institutions(conn: asyncpg.Connection, consortium_id: str, after: str, limit: int) -> list[Institution]:
    rows = await conn.fetch("SELECT * FROM institutions WHERE consortium_id = $1 AND institution_id > $2 "
                            "ORDER BY institution_id LIMIT $3", consortium_id, after, limit)
    return [_institution(r) for r in rows]


async def insert_institution(conn: asyncpg.Connection, i: Institution) -> bool:
    return bool(await conn.fetchval(
        "INSERT INTO institutions (institution_id, consortium_id, display_name, level, lead_hospital_id, "
        "parent_institution_id, distance_km, address) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
        "ON CONFLICT DO NOTHING RETURNING true", i.institution_id, i.consortium_id, i.display_name, int(i.level),
        i.lead_hospital_id, i.parent_institution_id, i.distance_km, i.address))


def _consortium(row: asyncpg.Record) -> ConsortiumSettings:
    return ConsortiumSettings(row["consortium_id"], row["display_name"], row["emergency_acceptance_hours"],
                              row["urgent_acceptance_hours"], row["routine_acceptance_hours"],
                              json.loads(row["exam_validity"]), row["emergency_scheduling_hours"],
                              row["urgent_scheduling_hours"], row["routine_scheduling_hours"])


async def get_consortium(conn: asyncpg.Connection, consortium_id: str, *, for_update: bool = False
                         ) -> ConsortiumSettings | None:
    row = await conn.fetchrow("SELECT * FROM consortiums WHERE consortium_id = $1"
                              + (" FOR UPDATE" if for_update else ""), consortium_id)
    return _consortium(row) if row else None


async def all_consortiums(conn: asyncpg.Connection) -> list[ConsortiumSettings]:
    return [_consortium(r) for r in await conn.fetch("SELECT * FROM consortiums")]


async def upsert_consortium(conn: asyncpg.Connection, c: ConsortiumSettings, *, create: bool) -> bool:
    values = (c.consortium_id, c.display_name, c.emergency_acceptance_hours, c.urgent_acceptance_hours,
              c.routine_acceptance_hours, json.dumps(c.exam_validity), c.emergency_scheduling_hours,
              c.urgent_scheduling_hours, c.routine_scheduling_hours)
    if create:
        return bool(await conn.fetchval(
            "INSERT INTO consortiums (consortium_id, display_name, emergency_acceptance_hours, "
            "urgent_acceptance_hours, routine_acceptance_hours, exam_validity, emergency_scheduling_hours, "
            "urgent_scheduling_hours, routine_scheduling_hours) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
            "ON CONFLICT DO NOTHING RETURNING true", *values))
    await conn.execute(
        "UPDATE consortiums SET display_name = $2, emergency_acceptance_hours = $3, urgent_acceptance_hours = $4, "
        "routine_acceptance_hours = $5, exam_validity = $6, emergency_scheduling_hours = $7, "
        "urgent_scheduling_hours = $8, routine_scheduling_hours = $9 WHERE consortium_id = $1", *values)
    return True


# --- disease catalogue -------------------------------------------------------------------


async def latest_catalogue_version(conn: asyncpg.Connection, consortium_id: str) -> int:
    return await conn.fetchval("SELECT coalesce(max(version), 0) FROM disease_catalogues WHERE consortium_id = $1",
                               consortium_id)


async def catalogue(conn: asyncpg.Connection, consortium_id: str, version: int | None = None) -> Catalogue:
    if version is None:
        version = await latest_catalogue_version(conn, consortium_id)
    if not version:
        return EMPTY_CATALOGUE
    rows = await conn.fetch("SELECT code, display_name, level FROM disease_entries "
                            "WHERE consortium_id = $1 AND version = $2 ORDER BY code", consortium_id, version)
    return Catalogue(version, [CatalogueEntry(r["code"], r["display_name"], Level(r["level"])) for r in rows])


async def catalogue_meta(conn: asyncpg.Connection, consortium_id: str, version: int) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT version, description, created_at FROM disease_catalogues "
                               "WHERE consortium_id = $1 AND version = $2", consortium_id, version)


async def insert_catalogue(conn: asyncpg.Connection, consortium_id: str, description: str,
                           entries: list[CatalogueEntry]) -> int:
    # The consortium row lock serialises versions of one consortium.
    await conn.execute("SELECT 1 FROM consortiums WHERE consortium_id = $1 FOR UPDATE", consortium_id)
    version = await latest_catalogue_version(conn, consortium_id) + 1
    await conn.execute("INSERT INTO disease_catalogues (consortium_id, version, description) VALUES ($1, $2, $3)",
                       consortium_id, version, description)
    await conn.executemany(
        "INSERT INTO disease_entries (consortium_id, version, code, display_name, level) VALUES ($1, $2, $3, $4, $5)",
        [(consortium_id, version, e.code, e.name, int(e.level)) for e in entries])
    return version


# --- episodes and chronic care -------------------------------------------------------------


async def find_episode(conn: asyncpg.Connection, consortium_id: str, patient_id: str, category: str,
                       since: datetime) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT episode_id, deductible_paid_fen FROM episodes WHERE consortium_id = $1 AND patient_id = $2 "
        "AND icd_category = $3 AND last_activity_at >= $4 ORDER BY last_activity_at DESC LIMIT 1",
        consortium_id, patient_id, category, since)


async def get_episode(conn: asyncpg.Connection, episode_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM episodes WHERE episode_id = $1 FOR UPDATE", episode_id)


async def upsert_episode(conn: asyncpg.Connection, episode_id: str, consortium_id: str, patient_id: str,
                         category: str, add_fen: int, now: datetime) -> int:
    return await conn.fetchval(
        "INSERT INTO episodes (episode_id, consortium_id, patient_id, icd_category, deductible_paid_fen, "
        "created_at, last_activity_at) VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (episode_id) DO UPDATE "
        "SET deductible_paid_fen = episodes.deductible_paid_fen + $5, last_activity_at = $6 "
        "RETURNING deductible_paid_fen", episode_id, consortium_id, patient_id, category, add_fen, now)


async def chronic_status(conn: asyncpg.Connection, consortium_id: str, patient_id: str, code: str
                         ) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT colour, managing_institution_id FROM chronic_care WHERE consortium_id = $1 "
                               "AND patient_id = $2 AND condition_code = $3 FOR UPDATE", consortium_id, patient_id, code)


async def set_chronic_status(conn: asyncpg.Connection, consortium_id: str, patient_id: str, code: str,
                             colour: int, managing: str, now: datetime) -> None:
    await conn.execute(
        "INSERT INTO chronic_care (consortium_id, patient_id, condition_code, colour, managing_institution_id, "
        "updated_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (consortium_id, patient_id, condition_code) "
        "DO UPDATE SET colour = $4, managing_institution_id = $5, updated_at = $6",
        consortium_id, patient_id, code, colour, managing, now)


# --- create in two statements ------------------------------------------------------------
#
# A create used to take ~17 round trips (BEGIN, nine reads, seven writes, COMMIT, and the
# pool's reset); each costs a send/recv pair and an event-loop turn in this process, which
# was most of a create's CPU. `create_context` reads everything a create decides on in one
# statement; `insert_new` writes everything it changes in one more, which is its own
# transaction: it commits all of it or nothing.


@dataclass(frozen=True)
class CreateContext:
    existing_id: str | None          # the referral this (institution, request_id) already made
    sender: Institution | None
    receiver: Institution | None
    settings: ConsortiumSettings | None
    catalogue_version: int
    catalogue_stamp: datetime | None  # created_at of that version: part of the cache key
    episode_id: str | None           # the patient's open episode of this category
    episode_paid_fen: int            # its total when read (insert_new checks it is unchanged)


_CREATE_CONTEXT = """
WITH s AS (SELECT consortium_id FROM institutions WHERE institution_id = $1),
ep AS (SELECT episode_id, deductible_paid_fen FROM episodes
       WHERE $6 AND consortium_id = (SELECT consortium_id FROM s) AND patient_id = $4 AND icd_category = $5
         AND last_activity_at >= $7 ORDER BY last_activity_at DESC LIMIT 1 {lock}),
cat AS (SELECT version, created_at FROM disease_catalogues
        WHERE consortium_id = (SELECT consortium_id FROM s) ORDER BY version DESC LIMIT 1)
SELECT (SELECT referral_id FROM referrals WHERE sending_institution_id = $1 AND request_id = $2) AS existing_id,
       (SELECT i FROM institutions i WHERE i.institution_id = $1) AS sender,
       (SELECT r FROM institutions r WHERE r.institution_id = $3) AS receiver,
       (SELECT c FROM consortiums c WHERE c.consortium_id = (SELECT consortium_id FROM s)) AS consortium,
       coalesce((SELECT version FROM cat), 0) AS catalogue_version, (SELECT created_at FROM cat) AS catalogue_stamp,
       (SELECT episode_id FROM ep) AS episode_id, coalesce((SELECT deductible_paid_fen FROM ep), 0) AS episode_paid
"""

_CREATE_CONTEXT_PLAIN = _CREATE_CONTEXT.format(lock="")
_CREATE_CONTEXT_LOCKED = _CREATE_CONTEXT.format(lock="FOR UPDATE")


async def create_context(conn: asyncpg.Connection, sending_institution_id: str, request_id: str,
                         receiving_institution_id: str, patient_id: str, icd_category: str,
                         find_episode_since: datetime | None, *, lock_episode: bool = False) -> CreateContext:
    """Idempotency check, both members, the consortium's settings, its catalogue version and
    (when `find_episode_since` is set) the patient's open episode, as `find_episode` finds it;
    `lock_episode` locks that row (FOR UPDATE) for the rest of the caller's transaction."""
    sql = _CREATE_CONTEXT_LOCKED if lock_episode else _CREATE_CONTEXT_PLAIN
    row = await conn.fetchrow(sql, sending_institution_id, request_id, receiving_institution_id,
                              patient_id, icd_category, find_episode_since is not None,
                              find_episode_since or datetime(1970, 1, 1).astimezone())
    sender, receiver, consortium = row["sender"], row["receiver"], row["consortium"]
    return CreateContext(
        existing_id=row["existing_id"],
        sender=_institution(sender) if sender is not None else None,
        receiver=_institution(receiver) if receiver is not None else None,
        settings=_consortium(consortium) if consortium is not None else None,
        catalogue_version=row["catalogue_version"], catalogue_stamp=row["catalogue_stamp"],
        episode_id=row["episode_id"], episode_paid_fen=row["episode_paid"])


class CatalogueCache:
    """Catalogue versions are immutable once written (a change is a new version), so a
    version read once serves every later create; keyed by version and its creation time so
    that a consortium recreated under the same id never sees another's entries."""

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._entries: dict[tuple, Catalogue] = {}

    async def get(self, conn: asyncpg.Connection, consortium_id: str, version: int,
                  stamp: datetime | None) -> Catalogue:
        if not version:
            return EMPTY_CATALOGUE
        key = (consortium_id, version, stamp)
        found = self._entries.get(key)
        if found is None:
            found = await catalogue(conn, consortium_id, version)
            if len(self._entries) >= self._size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = found
        return found


class EpisodeMoved(Exception):
    """The episode's total changed between `create_context` and `insert_new`: nothing was
    written; read again and retry."""


_INSERT_NEW = f"""
WITH ins AS (
    INSERT INTO referrals ({', '.join(_COLUMNS)})
    VALUES ({', '.join(f'${i}' for i in range(1, len(_COLUMNS) + 1))})
    ON CONFLICT (sending_institution_id, request_id) DO NOTHING RETURNING referral_id),
ep AS (
    INSERT INTO episodes (episode_id, consortium_id, patient_id, icd_category, deductible_paid_fen, created_at,
                          last_activity_at)
    SELECT $21::text, $2::text, $11::text, $22::text, $23::bigint, $24::timestamptz, $24::timestamptz FROM ins
    ON CONFLICT (episode_id) DO UPDATE SET deductible_paid_fen = episodes.deductible_paid_fen + $23::bigint,
                                           last_activity_at = $24::timestamptz
        WHERE episodes.deductible_paid_fen = $25::bigint
    RETURNING deductible_paid_fen),
tr AS (
    INSERT INTO referral_transitions (referral_id, from_state, to_state, actor, actor_institution_id, reason, at)
    SELECT ins.referral_id, t.f, t.t, t.a, t.ai, t.r, t.at FROM ins,
        unnest($26::smallint[], $27::smallint[], $28::text[], $29::text[], $30::text[], $31::timestamptz[])
        WITH ORDINALITY AS t(f, t, a, ai, r, at, n)
    ORDER BY t.n),
ob AS (
    INSERT INTO outbox (event_id, subject, event_type, aggregate_id, payload)
    SELECT o.id, o.s, o.et, ins.referral_id, o.p FROM ins,
        unnest($32::uuid[], $33::text[], $34::text[], $35::bytea[]) WITH ORDINALITY AS o(id, s, et, p, n)
    ORDER BY o.n),
au AS (
    INSERT INTO audit_log (subject, institution_id, role, action, resource, patient_id, request_id)
    SELECT $36::text, $37::text, $38::text, $39::text, $40::text, $41::text, $42::text FROM ins),
-- The consortium row lock orders the change log's commits within a consortium (see
-- append_change); this statement is the whole transaction, so it is held only to its commit.
seq AS (
    UPDATE consortiums SET change_seq = change_seq + 1
    WHERE consortium_id = $2 AND EXISTS (SELECT 1 FROM ins) RETURNING change_seq),
ch AS (
    INSERT INTO referral_changes (consortium_id, seq, referral_id, sending_institution_id,
                                  receiving_institution_id, payload)
    SELECT $2, seq.change_seq, $1, $5, $6, $43::bytea FROM seq)
SELECT EXISTS (SELECT 1 FROM ins) AS inserted, (SELECT deductible_paid_fen FROM ep) AS paid,
       CASE WHEN EXISTS (SELECT 1 FROM ins) AND NOT EXISTS (SELECT 1 FROM ep)
            THEN referral_retry('episode total changed: retry the create') END AS retry
"""


async def insert_new(conn: asyncpg.Connection, referral: Referral, *, episode_category: str, add_fen: int,
                     episode_paid_before: int, now: datetime, outbox_rows: list[tuple], audit_row: tuple,
                     change: bytes) -> int | None:
    """Everything a create writes, in one statement (so one transaction when run outside
    one): the referral, the episode total, the transitions, the events, the audit row, the
    change-log row. None (nothing written) when the institution already used the request
    id; EpisodeMoved (nothing written) when the episode total is no longer
    `episode_paid_before`; else the episode's total after this create."""
    assert referral.billing is not None
    referral.version = 1
    history = referral.history
    try:
        row = await conn.fetchrow(
            _INSERT_NEW, *_row_values(referral),
            referral.billing.episode_id, episode_category, add_fen, now, episode_paid_before,
            [int(t.from_state) if t.from_state else None for t in history], [int(t.to_state) for t in history],
            [t.actor for t in history], [t.actor_institution_id for t in history], [t.reason for t in history],
            [t.at for t in history],
            [o[0] for o in outbox_rows], [o[1] for o in outbox_rows], [o[2] for o in outbox_rows],
            [o[4] for o in outbox_rows],
            *audit_row, change)
    except asyncpg.SerializationError as exc:
        raise EpisodeMoved() from exc
    if not row["inserted"]:
        return None
    referral._persisted_history = len(history)  # type: ignore[attr-defined]
    return row["paid"]
