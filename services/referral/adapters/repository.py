"""asyncpg repository: the aggregate, membership, catalogue, episodes, change log.

All functions take a connection so the service layer owns the transaction.
"""
from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
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


async def open_episode(conn: asyncpg.Connection, consortium_id: str, patient_id: str, category: str, *,
                       for_update: bool = False) -> asyncpg.Record | None:
    """The patient's one open episode of the category (a unique index), lapsed or not
    (`rules.episode_continues`)."""
    return await conn.fetchrow(
        "SELECT episode_id, deductible_paid_fen, last_activity_at FROM episodes WHERE consortium_id = $1 "
        "AND patient_id = $2 AND icd_category = $3 AND closed_at IS NULL" + (" FOR UPDATE" if for_update else ""),
        consortium_id, patient_id, category)


async def close_episode(conn: asyncpg.Connection, episode_id: str, now: datetime) -> None:
    await conn.execute("UPDATE episodes SET closed_at = $2 WHERE episode_id = $1 AND closed_at IS NULL",
                       episode_id, now)


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
    episode_id: str | None           # the patient's open episode of this category, lapsed or not
    episode_paid_fen: int            # its total when read (insert_new checks it is unchanged)
    episode_last_activity_at: datetime | None


@dataclass(frozen=True)
class ContextQuery:
    sending_institution_id: str
    request_id: str
    receiving_institution_id: str
    patient_id: str
    icd_category: str
    find_episode: bool  # False: the create names its episode


# One row per create asked about, in the order asked; any number of creates, of any consortium.
_CREATE_CONTEXT = """
SELECT (SELECT referral_id FROM referrals WHERE sending_institution_id = q.sender AND request_id = q.request_id)
           AS existing_id,
       (SELECT i FROM institutions i WHERE i.institution_id = q.sender) AS sender,
       (SELECT r FROM institutions r WHERE r.institution_id = q.receiver) AS receiver,
       (SELECT c FROM consortiums c WHERE c.consortium_id = s.consortium_id) AS consortium,
       coalesce(cat.version, 0) AS catalogue_version, cat.created_at AS catalogue_stamp,
       ep.episode_id, coalesce(ep.deductible_paid_fen, 0) AS episode_paid, ep.last_activity_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bool[])
    WITH ORDINALITY AS q(sender, request_id, receiver, patient_id, category, find, n)
LEFT JOIN institutions s ON s.institution_id = q.sender
LEFT JOIN LATERAL (SELECT version, created_at FROM disease_catalogues WHERE consortium_id = s.consortium_id
                   ORDER BY version DESC LIMIT 1) cat ON true
-- LIMIT 1 (there is one open episode at most) keeps this a lookup per create: without it
-- the planner flattens the subquery into a join that scans the consortium's episodes.
LEFT JOIN LATERAL (SELECT episode_id, deductible_paid_fen, last_activity_at FROM episodes
                   WHERE q.find AND consortium_id = s.consortium_id AND patient_id = q.patient_id
                     AND icd_category = q.category AND closed_at IS NULL LIMIT 1 {lock}) ep ON true
ORDER BY q.n
"""

_CREATE_CONTEXT_PLAIN = _CREATE_CONTEXT.format(lock="")
_CREATE_CONTEXT_LOCKED = _CREATE_CONTEXT.format(lock="FOR UPDATE")


async def create_context(conn: asyncpg.Connection, queries: list[ContextQuery], *,
                         lock_episode: bool = False) -> list[CreateContext]:
    """Per create: the idempotency check, both members, the consortium's settings, its
    catalogue version and (when `find_episode`) the patient's open episode, as `open_episode`
    finds it; `lock_episode` locks those rows (FOR UPDATE) for the rest of the caller's
    transaction."""
    rows = await conn.fetch(
        _CREATE_CONTEXT_LOCKED if lock_episode else _CREATE_CONTEXT_PLAIN,
        [q.sending_institution_id for q in queries], [q.request_id for q in queries],
        [q.receiving_institution_id for q in queries], [q.patient_id for q in queries],
        [q.icd_category for q in queries], [q.find_episode for q in queries])
    out = []
    for row in rows:
        sender, receiver, consortium = row["sender"], row["receiver"], row["consortium"]
        out.append(CreateContext(
            existing_id=row["existing_id"],
            sender=_institution(sender) if sender is not None else None,
            receiver=_institution(receiver) if receiver is not None else None,
            settings=_consortium(consortium) if consortium is not None else None,
            catalogue_version=row["catalogue_version"], catalogue_stamp=row["catalogue_stamp"],
            episode_id=row["episode_id"], episode_paid_fen=row["episode_paid"],
            episode_last_activity_at=row["last_activity_at"]))
    return out


class CatalogueCache:
    """Catalogue versions are immutable once written (a change is a new version), so a
    version read once serves every later create; keyed by version and its creation time so
    that a consortium recreated under the same id never sees another's entries."""

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._entries: dict[tuple, Catalogue] = {}

    async def get(self, connection: AbstractAsyncContextManager[asyncpg.Connection], consortium_id: str,
                  version: int, stamp: datetime | None) -> Catalogue:
        """`connection` is entered only when the version is not cached yet."""
        if not version:
            return EMPTY_CATALOGUE
        key = (consortium_id, version, stamp)
        found = self._entries.get(key)
        if found is None:
            async with connection as conn:
                found = await catalogue(conn, consortium_id, version)
            if len(self._entries) >= self._size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = found
        return found


class EpisodeMoved(Exception):
    """An episode's total changed between `create_context` and `insert_new`, or the episode
    a create would open was opened by another: nothing was written; read again and retry."""


@dataclass
class NewReferral:
    """Everything one create writes, built before the write (see `insert_new`)."""
    referral: Referral
    episode_category: str
    add_fen: int
    episode_paid_before: int | None  # the total `create_context` read (the write checks it); None: opens it
    closes_episode: str              # the lapsed open episode the one it opens replaces, or ""
    now: datetime
    outbox_rows: list[tuple]         # services.common.outbox.row values
    audit_row: tuple                 # services.common.audit.values
    change: bytes                    # the change-log payload (WatchReferralsResponse)


# Creates of one consortium take this lock first, so they never wait for each other halfway:
# a create holds the unique entry of its request id while it waits for the episode row,
# and a concurrent create of the same episode, holding that row, may be inserting the same
# request id (a client's retry), which is a deadlock. Transitions never take it: they lock
# what they change and then the consortium row, as a create does after this lock. Every
# write that may open an episode holds it (a chronic-care proposal too), so a create
# retried under it sees the patient's open episode as it will be at its commit.
_CREATES_LOCK = 0x5265_6643  # the advisory lock's first key, "ReFC": referral creates


def _take_creates_lock(consortium: str) -> str:
    """SQL taking the creates lock of the consortium that the SQL expression `consortium`
    names: one spelling of the key for every statement that takes it."""
    return f"pg_advisory_xact_lock({_CREATES_LOCK}, hashtext({consortium}::text))"


async def lock_creates(conn: asyncpg.Connection, consortium_id: str) -> None:
    """Wait for the consortium's creates in flight; held to the end of the transaction."""
    await conn.execute(f"SELECT {_take_creates_lock('$1')}", consortium_id)


# One statement for any number of creates of one consortium: every row goes in as an array
# element, and the rows of a create whose request id was already used are dropped by the
# joins on `ins`. The consortium's row lock orders the change log's commits within a
# consortium (see append_change); this statement is the whole transaction, so the lock is
# held only to its commit, once for the whole batch. The creates lock comes before all of
# it: `v` yields no row until `gate` has run.
_REFERRAL_ARRAYS = ("text", "smallint", "smallint", "text", "text", "text", "smallint", "text", "text", "text",
                    "text", "text", "timestamptz", "timestamptz", "timestamptz", "timestamptz", "timestamptz",
                    "text")
_V_COLUMNS = tuple(c for c in _COLUMNS if c not in ("consortium_id", "version"))


def _arrays(start: int, types: tuple[str, ...]) -> str:
    return ", ".join(f"${start + i}::{t}[]" for i, t in enumerate(types))


_N = len(_REFERRAL_ARRAYS)
_EPISODE_ARRAYS = ("text", "bigint", "bigint", "text", "timestamptz", "bytea")
_T = 2 + _N + len(_EPISODE_ARRAYS)   # the first parameter of the transitions' arrays
_INSERT_NEW = f"""
WITH gate AS (SELECT {_take_creates_lock('$1')} IS NULL AS taken),
v AS (
    SELECT * FROM unnest({_arrays(2, _REFERRAL_ARRAYS)}, {_arrays(2 + _N, _EPISODE_ARRAYS)})
    WITH ORDINALITY AS v({', '.join(_V_COLUMNS)}, icd_category, add_fen, paid_before, closes, now, change, n)
    WHERE EXISTS (SELECT FROM gate)),
ins AS (
    INSERT INTO referrals ({', '.join(_COLUMNS)})
    SELECT referral_id, $1::text, {', '.join(_V_COLUMNS[1:-1])}, 1, body::jsonb FROM v ORDER BY n
    ON CONFLICT (sending_institution_id, request_id) DO NOTHING RETURNING referral_id),
-- The episodes are found by key (= ANY of an array: an index scan), not by a join with `v`,
-- which the planner may make a scan of every episode: one per statement, in the create path.
closed AS (
    UPDATE episodes e SET closed_at = v.now FROM v JOIN ins USING (referral_id)
    WHERE e.episode_id = ANY(ARRAY(SELECT closes FROM v WHERE closes <> ''))
      AND e.episode_id = v.closes AND e.closed_at IS NULL
    RETURNING e.episode_id),
-- A patient has one open episode per category (unique index episodes_open). A create whose
-- episode another opened after its read, or the second of two creates in the batch opening
-- one, inserts nothing here, and the count below sends it to retry. Runs after `closed`
-- (its count makes that run to the end first), so a lapsed episode is out of the way.
opened AS (
    INSERT INTO episodes (episode_id, consortium_id, patient_id, icd_category, deductible_paid_fen, created_at,
                          last_activity_at)
    SELECT v.episode_id, $1::text, v.patient_id, v.icd_category, v.add_fen, v.now, v.now
    FROM v JOIN ins USING (referral_id) WHERE v.paid_before IS NULL AND (SELECT count(*) FROM closed) >= 0
    ON CONFLICT (consortium_id, patient_id, icd_category) WHERE closed_at IS NULL DO NOTHING
    RETURNING episode_id),
-- Only from the total the create read; two creates of one episode in the batch update it
-- once, and the count below sends them to be written one at a time.
joined AS (
    UPDATE episodes e SET deductible_paid_fen = e.deductible_paid_fen + v.add_fen, last_activity_at = v.now
    FROM v JOIN ins USING (referral_id)
    WHERE e.episode_id = ANY(ARRAY(SELECT episode_id FROM v WHERE paid_before IS NOT NULL))
      AND e.episode_id = v.episode_id AND e.deductible_paid_fen = v.paid_before
    RETURNING e.episode_id),
tr AS (
    INSERT INTO referral_transitions (referral_id, from_state, to_state, actor, actor_institution_id, reason, at)
    SELECT t.referral_id, t.f, t.t, t.a, t.ai, t.r, t.at
    FROM unnest({_arrays(_T, ("text", "smallint", "smallint", "text", "text", "text", "timestamptz"))})
        WITH ORDINALITY AS t(referral_id, f, t, a, ai, r, at, n)
    JOIN ins USING (referral_id) ORDER BY t.n),
ob AS (
    INSERT INTO outbox (event_id, subject, event_type, aggregate_id, payload)
    SELECT o.id, o.s, o.et, o.referral_id, o.p
    FROM unnest({_arrays(_T + 7, ("text", "uuid", "text", "text", "bytea"))})
        WITH ORDINALITY AS o(referral_id, id, s, et, p, n)
    JOIN ins USING (referral_id) ORDER BY o.n),
au AS (
    INSERT INTO audit_log (subject, institution_id, role, action, resource, patient_id, request_id)
    SELECT a.subject, a.institution_id, a.role, a.action, a.resource, a.patient_id, a.request_id
    FROM unnest({_arrays(_T + 12, ("text",) * 8)})
        WITH ORDINALITY AS a(referral_id, subject, institution_id, role, action, resource, patient_id, request_id, n)
    JOIN ins USING (referral_id) ORDER BY a.n),
cnt AS (SELECT count(*) AS k FROM ins),
seq AS (
    UPDATE consortiums SET change_seq = change_seq + (SELECT k FROM cnt)
    WHERE consortium_id = $1 AND (SELECT k FROM cnt) > 0 RETURNING change_seq),
ch AS (
    INSERT INTO referral_changes (consortium_id, seq, referral_id, sending_institution_id,
                                  receiving_institution_id, payload)
    SELECT $1, seq.change_seq - cnt.k + row_number() OVER (ORDER BY v.n), v.referral_id, v.sending_institution_id,
           v.receiving_institution_id, v.change
    FROM v JOIN ins USING (referral_id) CROSS JOIN seq CROSS JOIN cnt)
SELECT coalesce((SELECT array_agg(referral_id) FROM ins), '{{}}') AS inserted,
       CASE WHEN (SELECT count(*) FROM opened) + (SELECT count(*) FROM joined) <> (SELECT k FROM cnt)
            THEN referral_retry('episode total changed or opened: retry the create') END AS retry
"""


async def insert_new(conn: asyncpg.Connection, consortium_id: str, writes: list[NewReferral]) -> list[bool]:
    """Everything the creates of one consortium write, in one statement (so one transaction
    when run outside one): the referrals, the episode totals, the transitions, the events,
    the audit rows, the change-log rows. Per create: False (nothing written for it) when its
    institution already used its request id. EpisodeMoved (nothing written at all) when an
    episode's total is no longer the `episode_paid_before` of its create, or the episode it
    would open is open already."""
    columns: list[list] = [[] for _ in range(_N + len(_EPISODE_ARRAYS))]
    transitions: list[list] = [[] for _ in range(7)]
    events: list[list] = [[] for _ in range(5)]
    audits: list[list] = [[] for _ in range(8)]
    for w in writes:
        r = w.referral
        assert r.billing is not None and r.consortium_id == consortium_id
        r.version = 1
        values = _row_values(r)
        del values[18], values[1]   # version (always 1) and consortium (one per statement)
        for column, value in zip(columns, (*values, w.episode_category, w.add_fen, w.episode_paid_before,
                                           w.closes_episode, w.now, w.change), strict=True):
            column.append(value)
        for t in r.history:
            for column, value in zip(transitions, (r.id, int(t.from_state) if t.from_state else None,
                                                   int(t.to_state), t.actor, t.actor_institution_id, t.reason,
                                                   t.at)):
                column.append(value)
        for o in w.outbox_rows:
            for column, value in zip(events, (r.id, o[0], o[1], o[2], o[4])):
                column.append(value)
        for column, value in zip(audits, (r.id, *w.audit_row)):
            column.append(value)
    try:
        row = await conn.fetchrow(_INSERT_NEW, consortium_id, *columns, *transitions, *events, *audits)
    except asyncpg.SerializationError as exc:
        raise EpisodeMoved() from exc
    inserted = set(row["inserted"])
    for w in writes:
        if w.referral.id in inserted:
            w.referral._persisted_history = len(w.referral.history)  # type: ignore[attr-defined]
    return [w.referral.id in inserted for w in writes]
