"""Use cases: one transaction each; events to the outbox and a change-log row for
WatchReferrals written in the same transaction as the change."""
from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import asyncpg

from referral.v1 import events_pb2, referral_service_pb2 as api
from services.common import audit, outbox
from services.common.auth import Caller, Role
from services.common.batching import Batcher
from services.common.errors import FailedPrecondition, NotFound, PermissionDenied, Violations
from services.common.logging import get_logger
from services.common.pii import PiiCipher, mask_id_number, mask_mobile
from services.referral.adapters import mapping, repository as repo
from services.referral.domain import rules
from services.referral.domain.model import (
    Actor, Billing, Completion, Direction, Event, Institution, Level, Need, Patient, Purpose, Referral, State,
    Urgency)
from services.referral.domain.validators import birth_date_of, is_male, mask_name
from services.referral.service_layer import commands, retention

log = get_logger(__name__)

WRITE_ROLES = (Role.CLINIC_DOCTOR, Role.REFERRAL_DESK)
READ_ROLES = (Role.CLINIC_DOCTOR, Role.REFERRAL_DESK, Role.BED_MANAGER, Role.CONSORTIUM_OFFICE, Role.SERVICE)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Scope:
    consortium_id: str
    # None: every referral of the consortium (the consortium office).
    institution_id: str | None

    def sees(self, consortium_id: str, sending_institution_id: str, receiving_institution_id: str,
             sent: bool) -> bool:
        """What every read (get, list, watch, reveal, a transition's load) may show. A
        referral never sent (a draft, perhaps still without the patient's consent) is its
        sender's alone; for anyone else it does not exist."""
        if consortium_id != self.consortium_id:
            return False
        if self.institution_id == sending_institution_id:
            return True
        return sent and self.institution_id in (None, receiving_institution_id)


async def audit_referral(conn: asyncpg.Connection, caller: Caller, referral: Referral, action: str = "") -> None:
    await audit.record(conn, caller, action or audit.rpc_method(), mapping.referral_name(referral.id),
                       referral.patient.patient_id)


class _Duplicate(Exception):
    """Raised inside a create's transaction to roll it back when the request id was used."""


class ReferralService:
    def __init__(self, pool: asyncpg.Pool, pii: PiiCipher, clock: Callable[[], datetime] = utcnow) -> None:
        self.pool = pool
        self.pii = pii
        self.clock = clock
        self._catalogues = repo.CatalogueCache()
        self._writes: Batcher[str, repo.NewReferral, bool] = Batcher(
            "referral_create", self._write_creates, self._write_create)
        self._reads: Batcher[None, repo.ContextQuery, repo.CreateContext] = Batcher(
            "referral_create_context", self._read_contexts, self._read_context)

    # --- scope ---------------------------------------------------------------------------

    async def scope(self, conn: asyncpg.Connection, caller: Caller) -> Scope:
        caller.require(*READ_ROLES)
        if caller.role is Role.CONSORTIUM_OFFICE:
            # An office's token names its consortium, or the office is registered under
            # the consortium's own id.
            return Scope(caller.consortium_id or caller.institution_id, None)
        member = await repo.get_institution(conn, caller.institution_id)
        if member is None:
            raise PermissionDenied("调用方机构不是医联体成员", reason="NOT_A_MEMBER")
        return Scope(member.consortium_id, caller.institution_id)

    async def _load(self, conn: asyncpg.Connection, referral_id: str, caller: Caller, *,
                    for_update: bool = False) -> Referral:
        scope = await self.scope(conn, caller)
        referral = await repo.get(conn, referral_id, for_update=for_update)
        # Another institution's referral is indistinguishable from a missing one.
        if referral is None or not scope.sees(referral.consortium_id, referral.sending_institution_id,
                                              referral.receiving_institution_id, referral.submitted_at is not None):
            raise NotFound(f"转诊单 {mapping.referral_name(referral_id)} 不存在", reason="REFERRAL_NOT_FOUND")
        return referral

    # --- writes shared by the use cases -------------------------------------------------------

    async def _commit_change(self, conn: asyncpg.Connection, referral: Referral, events: list[Event],
                             change_type: int, *, new: bool = False, request_id: str = "") -> None:
        if new:
            if not await repo.insert_referral(conn, referral):
                raise _Duplicate()
        else:
            await repo.save(conn, referral)
        today = self.clock().date()
        for event in events:
            await outbox.add(conn, mapping.event_proto(event, referral, self.pii, today), aggregate_id=referral.id,
                             hospital_id=referral.hospital_id, request_id=request_id)
        change = api.WatchReferralsResponse(change_type=change_type,
                                            transition=mapping.transition_proto(referral.history[-1]),
                                            referral=mapping.referral_proto(referral, today))
        await repo.append_change(conn, referral, change.SerializeToString())

    async def _transition(self, caller: Caller, referral_id: str,
                          step: Callable[[Referral, Actor, datetime], list[Event]],
                          roles: tuple[Role, ...] = WRITE_ROLES,
                          prepare: Callable[[asyncpg.Connection, Referral], object] | None = None) -> Referral:
        caller.require(*roles)
        now = self.clock()
        actor = Actor(caller.subject, caller.institution_id)
        async with self.pool.acquire() as conn, conn.transaction():
            # The row lock makes concurrent transitions queue; the loser then sees the new
            # state and gets FAILED_PRECONDITION.
            referral = await self._load(conn, referral_id, caller, for_update=True)
            if prepare is not None:
                await prepare(conn, referral)
            events = step(referral, actor, now)
            await self._commit_change(conn, referral, events, api.CHANGE_TYPE_STATE_CHANGED)
            await audit_referral(conn, caller, referral)
        return referral

    # --- reads ---------------------------------------------------------------------------

    async def get(self, caller: Caller, referral_id: str) -> Referral:
        async with self.pool.acquire() as conn:
            referral = await self._load(conn, referral_id, caller)
            await audit_referral(conn, caller, referral, "GetReferral")
            return referral

    async def list(self, caller: Caller, f: commands.ListFilter) -> tuple[list[Referral], bool]:
        async with self.pool.acquire() as conn:
            scope = await self.scope(conn, caller)
            where, args = ["consortium_id = $1"], [scope.consortium_id]

            def add(sql: str, value) -> None:
                args.append(value)
                where.append(sql.replace("?", f"${len(args)}"))

            # Scope.sees, in SQL.
            if scope.institution_id is None:
                where.append("submitted_at IS NOT NULL")
            else:
                add("(sending_institution_id = ? OR (receiving_institution_id = ? AND submitted_at IS NOT NULL))",
                    scope.institution_id)
            if f.sending_institution_id:
                add("sending_institution_id = ?", f.sending_institution_id)
            if f.receiving_institution_id:
                add("receiving_institution_id = ?", f.receiving_institution_id)
            if f.direction:
                add("direction = ?", f.direction)
            if f.states:
                add("state = ANY(?::smallint[])", f.states)
            if f.urgency:
                add("urgency = ?", f.urgency)
            if f.department:
                add("department = ?", f.department)
            if f.created_from:
                add("created_at >= ?", f.created_from)
            if f.created_to:
                add("created_at < ?", f.created_to)
            if f.after:
                args.extend(f.after)
                where.append(f"(created_at, referral_id) < (${len(args) - 1}, ${len(args)})")
            rows = await repo.list_referrals(conn, where, args, f.page_size + 1)
            await audit.record_many(conn, caller, "ListReferrals", [
                (mapping.referral_name(r.id), r.patient.patient_id) for r in rows[:f.page_size]])
        return rows[:f.page_size], len(rows) > f.page_size

    async def changes_after(self, caller: Caller, scope: Scope, after: int
                            ) -> tuple[list[api.WatchReferralsResponse], int, bool]:
        """WatchReferrals' next batch: the caller's changes after the cursor `after` (each
        with its own cursor), the cursor past every row read, and whether more wait."""
        async with self.pool.acquire() as conn:
            # FAILED_PRECONDITION when the cursor is older than the retained history.
            rows = await retention.changes_after(conn, scope.consortium_id, after, scope.institution_id)
            changes = []
            for row in rows:
                change = api.WatchReferralsResponse.FromString(row["payload"])
                r = change.referral
                if scope.sees(r.consortium_id, r.sending_institution_id, r.receiving_institution_id,
                              r.HasField("submit_time")):
                    change.cursor = str(row["seq"])
                    changes.append(change)
            # Audited before the batch leaves, like any read of patient data.
            await audit.record_many(conn, caller, "WatchReferrals", [
                (c.referral.name, c.referral.patient.patient_id) for c in changes])
        return changes, rows[-1]["seq"] if rows else after, len(rows) == retention.BATCH

    # --- create --------------------------------------------------------------------------

    async def create(self, caller: Caller, cmd: commands.CreateReferral) -> Referral:
        """A read and a write: `repo.create_context` reads what the create decides on;
        `repo.insert_new` writes the referral, its transitions, its outbox event, its audit
        row, its change-log row (under the consortium lock, held to the commit) and the
        episode total, as one statement and so one transaction, committed before we answer.
        Concurrent creates of a consortium share that statement (`self._writes`)."""
        caller.require(*WRITE_ROLES)
        try:
            prepared = await self._prepare_create(caller, cmd)
            if isinstance(prepared, Referral):
                return prepared
            try:
                inserted = await self._writes.submit(prepared.referral.consortium_id, prepared)
            except repo.EpisodeMoved:
                # A concurrent create moved the same patient's episode total in between
                # (nothing was written): again, in a transaction holding the episode row
                # lock from the read to the commit, behind the consortium's other creates.
                async with self.pool.acquire() as conn, conn.transaction():
                    await repo.lock_creates(conn, prepared.referral.consortium_id)
                    prepared = await self._prepare_create(caller, cmd, locked=conn)
                    if isinstance(prepared, Referral):
                        return prepared
                    [inserted] = await repo.insert_new(conn, prepared.referral.consortium_id, [prepared])
            if not inserted:
                raise _Duplicate()
            return prepared.referral
        except _Duplicate:
            # A concurrent call with the same request id won; answer as it did.
            async with self.pool.acquire() as conn, conn.transaction():
                existing = await repo.get_by_request(conn, caller.institution_id, cmd.request_id)
                assert existing is not None
                await audit_referral(conn, caller, existing, "CreateReferral")
            return existing

    async def _read_contexts(self, _: None, queries: list[repo.ContextQuery]) -> list[repo.CreateContext]:
        async with self.pool.acquire() as conn:
            return await repo.create_context(conn, queries)

    async def _read_context(self, _: None, query: repo.ContextQuery) -> repo.CreateContext:
        [ctx] = await self._read_contexts(None, [query])
        return ctx

    async def _write_creates(self, consortium_id: str, writes: list[repo.NewReferral]) -> list[bool]:
        async with self.pool.acquire() as conn:
            return await repo.insert_new(conn, consortium_id, writes)

    async def _write_create(self, consortium_id: str, write: repo.NewReferral) -> bool:
        [inserted] = await self._write_creates(consortium_id, [write])
        return inserted

    @contextlib.asynccontextmanager
    async def _connection(self, conn: asyncpg.Connection | None):
        if conn is not None:
            yield conn
        else:
            async with self.pool.acquire() as fresh:
                yield fresh

    async def _prepare_create(self, caller: Caller, cmd: commands.CreateReferral, *,
                              locked: asyncpg.Connection | None = None) -> Referral | repo.NewReferral:
        """The referral the create would write, or the one its request id already made.
        `locked`: a transaction's connection; the read then locks the episode row in it."""
        now = self.clock()
        patient = self._patient(cmd.patient, now.date())
        query = repo.ContextQuery(caller.institution_id, cmd.request_id, cmd.receiving_institution_id,
                                  patient.patient_id, cmd.diagnosis_code[:3], find_episode=not cmd.episode_id)
        if locked is None:
            ctx = await self._reads.submit(None, query)
        else:
            [ctx] = await repo.create_context(locked, [query], lock_episode=True)
        if ctx.existing_id is not None:
            # The audit row commits with the read: in the caller's transaction, else in this one.
            async with self._connection(locked) as conn, conn.transaction():
                existing = await repo.get(conn, ctx.existing_id)
                assert existing is not None
                await audit_referral(conn, caller, existing, "CreateReferral")
            return existing
        violations = Violations()
        sender, receiver = self._check_members(ctx.sender, ctx.receiver, violations,
                                               "referral.receiving_institution_id")
        assert ctx.settings is not None
        catalogue = await self._catalogues.get(self._connection(locked), sender.consortium_id,
                                               ctx.catalogue_version, ctx.catalogue_stamp)
        verdict = self._verdict(cmd, sender, receiver, catalogue, violations)
        closes = ""
        paid: int | None
        if cmd.episode_id:
            async with self._connection(locked) as conn:
                row = await repo.get_episode(conn, cmd.episode_id)
            if row is None or row["patient_id"] != patient.patient_id or row["consortium_id"] != sender.consortium_id:
                violations.add("episode_id", "就诊周期不存在或不属于该患者")
            episode_id, paid = cmd.episode_id, (row["deductible_paid_fen"] if row is not None else 0)
        elif ctx.episode_id is not None and rules.episode_continues(ctx.episode_last_activity_at, now):
            episode_id, paid = ctx.episode_id, ctx.episode_paid_fen
        else:
            # The write opens the episode (None: nothing paid before it), closing a lapsed one.
            episode_id, paid, closes = uuid.uuid4().hex, None, ctx.episode_id or ""
        violations.raise_if_any()
        referral, events = self._build_new(caller, cmd, sender, receiver, ctx.settings, verdict, patient,
                                           episode_id, now)
        assert referral.billing is not None
        # insert_new writes only if the episode total is still `paid`, so this is its new total.
        referral.billing.deductible_paid_fen = (paid or 0) + cmd.deductible_paid_fen
        referral.version = 1
        today = self.clock().date()
        outbox_rows = [outbox.row(mapping.event_proto(event, referral, self.pii, today), aggregate_id=referral.id,
                                  hospital_id=referral.hospital_id, request_id=cmd.request_id)[1]
                       for event in events]
        view = mapping.referral_proto(referral, today)
        change = api.WatchReferralsResponse(change_type=api.CHANGE_TYPE_CREATED,
                                            transition=mapping.transition_proto(referral.history[-1]),
                                            referral=view)
        # The API view is the one written to the change log.
        referral._response_view = (today, referral.version, view)  # type: ignore[attr-defined]
        return repo.NewReferral(
            referral, episode_category=cmd.diagnosis_code[:3], add_fen=cmd.deductible_paid_fen,
            episode_paid_before=paid, closes_episode=closes, now=now, outbox_rows=outbox_rows,
            change=change.SerializeToString(),
            audit_row=audit.values(caller, "CreateReferral", mapping.referral_name(referral.id),
                                   referral.patient.patient_id))

    async def _members(self, conn: asyncpg.Connection, caller: Caller, receiving_id: str, violations: Violations,
                       field: str) -> tuple[Institution, Institution | None]:
        return self._check_members(await repo.get_institution(conn, caller.institution_id),
                                   await repo.get_institution(conn, receiving_id), violations, field)

    @staticmethod
    def _check_members(sender: Institution | None, receiver: Institution | None, violations: Violations,
                       field: str) -> tuple[Institution, Institution | None]:
        if sender is None:
            raise PermissionDenied("调用方机构不是医联体成员", reason="NOT_A_MEMBER")
        if receiver is None or receiver.consortium_id != sender.consortium_id:
            violations.add(field, "接收机构不存在或不属于本医联体")
            return sender, None
        return sender, receiver

    def _patient(self, p: commands.PatientInput, today: date) -> Patient:
        return Patient(
            patient_id=self.pii.lookup_hash(p.id_number), name_masked=mask_name(p.display_name),
            gender=1 if is_male(p.id_number) else 2, birth_date=birth_date_of(p.id_number),
            id_number_masked=mask_id_number(p.id_number), mobile_masked=mask_mobile(p.mobile),
            id_number_ciphertext=self.pii.encrypt(p.id_number, "referral.id_number"),
            mobile_ciphertext=self.pii.encrypt(p.mobile, "referral.mobile"),
            name_ciphertext=self.pii.encrypt(p.display_name, "referral.name"), wechat_openid=p.wechat_openid)

    async def _new_referral(self, conn: asyncpg.Connection, caller: Caller, cmd: commands.CreateReferral
                            ) -> tuple[Referral, list[Event]]:
        now = self.clock()
        violations = Violations()
        sender, receiver = await self._members(conn, caller, cmd.receiving_institution_id, violations,
                                               "referral.receiving_institution_id")
        settings = await repo.get_consortium(conn, sender.consortium_id)
        assert settings is not None
        catalogue = await repo.catalogue(conn, sender.consortium_id)
        verdict = self._verdict(cmd, sender, receiver, catalogue, violations)
        patient = self._patient(cmd.patient, now.date())
        episode_id = await self._episode_for(conn, sender.consortium_id, patient.patient_id, cmd.diagnosis_code,
                                             cmd.episode_id, violations, now)
        violations.raise_if_any()
        return self._build_new(caller, cmd, sender, receiver, settings, verdict, patient, episode_id, now)

    @staticmethod
    def _verdict(cmd: commands.CreateReferral, sender: Institution, receiver: Institution | None,
                 catalogue: rules.Catalogue, violations: Violations):
        if receiver is None:
            return None
        verdict = rules.evaluate(catalogue, cmd.diagnosis_code, cmd.direction, sender.level, receiver.level,
                                 cmd.justification)
        problem = rules.check_direction(cmd.direction, sender.level, receiver.level)
        if problem:
            violations.add("referral.direction", problem)
        elif verdict.justification_required and not cmd.justification and not cmd.draft:
            violations.add("referral.justification", verdict.reasons[-1])
        return verdict

    def _build_new(self, caller: Caller, cmd: commands.CreateReferral, sender: Institution,
                   receiver: Institution | None, settings, verdict, patient: Patient, episode_id: str,
                   now: datetime) -> tuple[Referral, list[Event]]:
        assert receiver is not None and verdict is not None
        hospital = receiver if cmd.direction is Direction.UP else sender
        clinic = sender if cmd.direction is Direction.UP else receiver
        referral = Referral(
            id=uuid.uuid4().hex, consortium_id=sender.consortium_id, direction=cmd.direction,
            sending_institution_id=sender.institution_id, receiving_institution_id=receiver.institution_id,
            hospital_id=hospital.lead_hospital_id or hospital.institution_id, urgency=cmd.urgency, patient=patient,
            diagnosis_code=cmd.diagnosis_code, department=cmd.department, created_by=caller.subject,
            created_at=now, green_channel=cmd.green_channel, diagnosis_text=cmd.diagnosis_text,
            clinical_summary=cmd.clinical_summary, justification=cmd.justification, purpose=cmd.purpose,
            needs=cmd.needs, available_dates=cmd.available_dates, prior_results=cmd.prior_results,
            consent=cmd.consent, catalogue_disease=verdict.justification_required,
            clinic_distance_km=clinic.distance_km, request_id=cmd.request_id)
        self._apply_rules(referral, settings.exam_validity, receiver.level, episode_id, now.date())
        referral.created(Actor(caller.subject, caller.institution_id), now)
        events = [] if cmd.draft else referral.submit(Actor(caller.subject, caller.institution_id), now)
        return referral, events

    @staticmethod
    def _apply_rules(referral: Referral, validity: dict[str, int], receiving_level: Level, episode_id: str,
                     today: date) -> None:
        rules.recognise_results(referral.needs, referral.prior_results, validity, today)
        terms = rules.billing_terms(referral.direction, referral.purpose, referral.needs)
        paid = referral.billing.deductible_paid_fen if referral.billing else 0
        referral.billing = Billing(episode_id, paid, terms.deductible_carried, terms.deductible_waived,
                                   int(receiving_level))

    async def _episode_for(self, conn, consortium_id: str, patient_id: str, code: str, requested: str,
                           violations: Violations, now: datetime) -> str:
        if requested:
            row = await repo.get_episode(conn, requested)
            if row is None or row["patient_id"] != patient_id or row["consortium_id"] != consortium_id:
                violations.add("episode_id", "就诊周期不存在或不属于该患者")
            return requested
        # Under the creates lock, as every write that may open an episode, so that the open
        # episode read here stays the open one (the unique index) until this transaction commits.
        await repo.lock_creates(conn, consortium_id)
        row = await repo.open_episode(conn, consortium_id, patient_id, code[:3], for_update=True)
        if row is not None and rules.episode_continues(row["last_activity_at"], now):
            return row["episode_id"]
        if row is not None:
            await repo.close_episode(conn, row["episode_id"], now)
        return uuid.uuid4().hex

    async def _add_to_episode(self, conn, referral: Referral, add_fen: int) -> None:
        """Before the referral is written: a duplicate create rolls this back with it."""
        assert referral.billing is not None
        referral.billing.deductible_paid_fen = await repo.upsert_episode(
            conn, referral.billing.episode_id, referral.consortium_id, referral.patient.patient_id,
            referral.diagnosis_code[:3], add_fen, self.clock())

    # --- transitions -----------------------------------------------------------------------

    async def _refresh_rules(self, conn, referral: Referral) -> None:
        settings = await repo.get_consortium(conn, referral.consortium_id)
        receiver = await repo.get_institution(conn, referral.receiving_institution_id)
        assert settings is not None and receiver is not None and referral.billing is not None
        self._apply_rules(referral, settings.exam_validity, receiver.level, referral.billing.episode_id,
                          self.clock().date())

    @staticmethod
    def _require_justification(referral: Referral) -> None:
        if referral.catalogue_disease and referral.direction is Direction.UP and not referral.justification:
            raise FailedPrecondition("该病种属于基层诊治病种，上转须说明理由", reason="JUSTIFICATION_REQUIRED")

    async def submit(self, caller: Caller, referral_id: str, consent) -> Referral:
        async def prepare(conn, referral: Referral) -> None:
            if consent is not None and referral.state is State.DRAFT:
                referral.consent = consent
            self._require_justification(referral)
            await self._refresh_rules(conn, referral)
        return await self._transition(caller, referral_id, lambda r, a, now: r.submit(a, now), prepare=prepare)

    async def resubmit(self, caller: Caller, referral_id: str, information: str, results: list, justification: str
                       ) -> Referral:
        async def prepare(conn, referral: Referral) -> None:
            if referral.state is State.RETURNED:
                if results:
                    referral.prior_results = results
                if justification:
                    referral.justification = justification
            self._require_justification(referral)
            await self._refresh_rules(conn, referral)
        return await self._transition(caller, referral_id, lambda r, a, now: r.resubmit(a, now, information),
                                      prepare=prepare)

    async def accept(self, caller: Caller, referral_id: str, note: str) -> Referral:
        return await self._transition(caller, referral_id, lambda r, a, now: r.accept(a, now, note))

    async def reject(self, caller: Caller, referral_id: str, reason: str) -> Referral:
        return await self._transition(caller, referral_id, lambda r, a, now: r.reject(a, now, reason))

    async def return_to_sender(self, caller: Caller, referral_id: str, reason: str) -> Referral:
        return await self._transition(caller, referral_id, lambda r, a, now: r.return_to_sender(a, now, reason))

    async def cancel(self, caller: Caller, referral_id: str, reason: str) -> Referral:
        return await self._transition(caller, referral_id, lambda r, a, now: r.cancel(a, now, reason))

    async def withdraw_consent(self, caller: Caller, referral_id: str, reason: str) -> Referral:
        return await self._transition(caller, referral_id, lambda r, a, now: r.withdraw_consent(a, now, reason))

    async def record_arrival(self, caller: Caller, referral_id: str) -> Referral:
        return await self._transition(caller, referral_id, lambda r, a, now: r.record_arrival(a, now),
                                      roles=(*WRITE_ROLES, Role.BED_MANAGER))

    async def record_no_show(self, caller: Caller, referral_id: str, note: str) -> Referral:
        return await self._transition(caller, referral_id, lambda r, a, now: r.record_no_show(a, now, note))

    async def complete(self, caller: Caller, referral_id: str, completion: Completion,
                       proposal: commands.DownReferralProposal | None) -> Referral:
        caller.require(*WRITE_ROLES)
        now = self.clock()
        actor = Actor(caller.subject, caller.institution_id)
        async with self.pool.acquire() as conn, conn.transaction():
            referral = await self._load(conn, referral_id, caller, for_update=True)
            catalogue = await repo.catalogue(conn, referral.consortium_id)
            clinic_id = referral.sending_institution_id if referral.direction is Direction.UP \
                else referral.receiving_institution_id
            clinic = await repo.get_institution(conn, clinic_id)
            assert clinic is not None
            events = referral.complete(actor, now, completion, catalogue.treated_at(referral.diagnosis_code,
                                                                                    clinic.level))
            down = None
            if proposal is not None:
                if referral.direction is not Direction.UP:
                    raise FailedPrecondition("只有上转完成时可以建议下转", reason="NOT_AN_UP_REFERRAL")
                down, down_events = await self._propose_down(conn, caller, referral, proposal, now)
                completion.down_referral_id = down.id
                events[0].data.update(down_referral_id=down.id, first_follow_up=(proposal.follow_up_dates or
                                                                                  [None])[0])
            await self._commit_change(conn, referral, events, api.CHANGE_TYPE_STATE_CHANGED)
            await audit_referral(conn, caller, referral, "CompleteReferral")
            if down is not None:
                await self._add_to_episode(conn, down, 0)
                await self._commit_change(conn, down, down_events, api.CHANGE_TYPE_CREATED, new=True)
                await audit_referral(conn, caller, down, "CompleteReferral")
        return referral

    async def _propose_down(self, conn, caller: Caller, origin: Referral, p: commands.DownReferralProposal,
                            now: datetime) -> tuple[Referral, list[Event]]:
        violations = Violations()
        sender, receiver = await self._members(conn, caller, p.receiving_institution_id or
                                               origin.sending_institution_id, violations,
                                               "down_referral.receiving_institution_id")
        if receiver is not None and receiver.level >= sender.level:
            violations.add("down_referral.receiving_institution_id", "下转的接收机构级别应低于转出机构")
        violations.raise_if_any()
        assert receiver is not None
        settings = await repo.get_consortium(conn, origin.consortium_id)
        assert settings is not None and origin.billing is not None
        down = Referral(
            id=uuid.uuid4().hex, consortium_id=origin.consortium_id, direction=Direction.DOWN,
            sending_institution_id=sender.institution_id, receiving_institution_id=receiver.institution_id,
            hospital_id=sender.lead_hospital_id or sender.institution_id, urgency=Urgency.ROUTINE,
            patient=origin.patient, diagnosis_code=origin.diagnosis_code, department=origin.department,
            created_by=caller.subject, created_at=now, diagnosis_text=origin.diagnosis_text,
            clinical_summary=origin.completion.treatment_summary if origin.completion else "", purpose=p.purpose,
            needs=[Need(need_id="n1", kind="consultation", department="general")],
            available_dates=list(p.follow_up_dates), consent=p.consent, origin_referral_id=origin.id,
            care_plan=p.care_plan, follow_up_dates=list(p.follow_up_dates), clinic_distance_km=receiver.distance_km,
            request_id=f"down:{origin.id}")
        self._apply_rules(down, settings.exam_validity, receiver.level, origin.billing.episode_id, now.date())
        actor = Actor(caller.subject, caller.institution_id)
        down.created(actor, now)
        events = [Event("down_referral_proposed", data={
            "origin_referral_id": origin.id, "first_follow_up": (p.follow_up_dates or [None])[0],
            "clinic_name": receiver.display_name, "clinic_address": receiver.address})]
        # Without the patient's consent the proposal waits as a draft for the clinic to confirm.
        if p.consent is not None:
            events += down.submit(actor, now)
        return down, events

    # --- scheduling events ---------------------------------------------------------------------

    async def apply_scheduling(self, conn: asyncpg.Connection, referral_id: str, hospital_id: str,
                               step: Callable[[Referral, Actor, datetime], list[Event]]) -> bool:
        """Runs in the consumer's inbox transaction; False when the event no longer applies."""
        referral = await repo.get(conn, referral_id, for_update=True)
        if referral is None or referral.hospital_id != hospital_id:
            log.warning("scheduling event for an unknown referral", referral_id=referral_id)
            return False
        actor = Actor("service:scheduling", hospital_id, is_service=True)
        moves, seen = len(referral.history), referral.scheduling_event_at
        try:
            events = step(referral, actor, self.clock())
        except FailedPrecondition as exc:
            # e.g. the sender cancelled while the scheduler was placing it: nothing to move.
            log.info("scheduling event ignored", referral_id=referral_id, reason=exc.message)
            return False
        if len(referral.history) == moves:
            # The event does not count (see Referral.schedule): nothing a reader sees
            # changed, but a cancellation that came before its booking's placement is
            # remembered (scheduling_event_at) so that the placement stays out.
            if referral.scheduling_event_at != seen:
                await repo.save(conn, referral)
            log.info("stale scheduling event ignored", referral_id=referral_id)
            return False
        await self._commit_change(conn, referral, events, api.CHANGE_TYPE_STATE_CHANGED)
        await audit_referral(conn, Caller(actor.subject, hospital_id, Role.SERVICE), referral, "ApplySchedulingEvent")
        return True

    # --- SLA ---------------------------------------------------------------------------------

    async def check_sla(self) -> int:
        """Reports each referral once per stage that waited past its consortium's target."""
        now = self.clock()
        reported = 0
        async with self.pool.acquire() as conn:
            consortiums = await repo.all_consortiums(conn)
        for settings in consortiums:
            for stage, state_sql, since_sql in (("acceptance", "state = 2", _SUBMITTED),
                                                ("scheduling", "state IN (4, 6) AND direction = 1", _WAITING)):
                async with self.pool.acquire() as conn, conn.transaction():
                    rows = await conn.fetch(
                        f"SELECT r.referral_id, w.since, r.urgency FROM referrals r CROSS JOIN LATERAL ({since_sql}) w "
                        f"WHERE r.consortium_id = $1 AND {state_sql} AND w.since < $2::timestamptz - make_interval("
                        "hours => CASE r.urgency WHEN 1 THEN $3::int WHEN 2 THEN $4::int ELSE $5::int END) "
                        "AND NOT EXISTS (SELECT 1 FROM sla_breaches b WHERE b.referral_id = r.referral_id "
                        "AND b.stage = $6) ORDER BY r.referral_id LIMIT 500 FOR UPDATE OF r SKIP LOCKED",
                        settings.consortium_id, now, *(settings.target_hours(stage, u) for u in Urgency), stage)
                    for row in rows:
                        referral = await repo.get(conn, row["referral_id"])
                        assert referral is not None
                        target = timedelta(hours=settings.target_hours(stage, Urgency(row["urgency"])))
                        overdue = (now - row["since"] - target).total_seconds()
                        await conn.execute("INSERT INTO sla_breaches (referral_id, stage) VALUES ($1, $2)",
                                           referral.id, stage)
                        event = Event("sla_breached", data={"stage": stage, "overdue_seconds": overdue})
                        await outbox.add(conn, mapping.event_proto(event, referral, self.pii, now.date()),
                                         aggregate_id=referral.id, hospital_id=referral.hospital_id)
                        reported += 1
        return reported

    # --- chronic care ------------------------------------------------------------------------

    async def update_chronic_care(self, caller: Caller, cmd: commands.ChronicCareUpdate) -> api.ChronicCareStatus:
        caller.require(*WRITE_ROLES)
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            violations = Violations()
            manager = await repo.get_institution(conn, caller.institution_id)
            if manager is None:
                raise PermissionDenied("调用方机构不是医联体成员", reason="NOT_A_MEMBER")
            patient_id = self.pii.lookup_hash(cmd.patient.id_number)
            current = await repo.chronic_status(conn, manager.consortium_id, patient_id, cmd.condition_code)
            previous = rules.Colour(current["colour"]) if current else None
            colour = rules.Colour(cmd.colour)
            move = rules.proposed_move(previous, colour, manager.level)
            target = None
            if move is Direction.UP:
                target = await self._institution_at(conn, manager, rules.LEVEL_OF_COLOUR[colour])
            elif move is Direction.DOWN and cmd.proposed_receiving_institution_id:
                target = await repo.get_institution(conn, cmd.proposed_receiving_institution_id)
                if target is None or target.consortium_id != manager.consortium_id or target.level >= manager.level:
                    violations.add("proposed_receiving_institution_id", "接收机构不存在、不属于本医联体或级别不低于本机构")
            violations.raise_if_any()
            proposed_id = ""
            if target is not None:
                referral, _ = await self._new_referral(conn, caller, commands.CreateReferral(
                    request_id=f"chronic:{uuid.uuid4().hex}", direction=move, receiving_institution_id=target.institution_id,
                    urgency=Urgency.URGENT if colour is rules.Colour.RED else Urgency.ROUTINE, patient=cmd.patient,
                    diagnosis_code=cmd.condition_code, department="chronic_care", purpose=Purpose.CHRONIC_CARE,
                    clinical_summary=cmd.reason, justification=f"三色标管理：{_COLOUR_ZH[colour]}", draft=True))
                await self._add_to_episode(conn, referral, 0)
                await self._commit_change(conn, referral, [], api.CHANGE_TYPE_CREATED, new=True)
                proposed_id = referral.id
            await repo.set_chronic_status(conn, manager.consortium_id, patient_id, cmd.condition_code, int(colour),
                                          manager.institution_id, now)
            await audit.record(conn, caller, "UpdateChronicCareStatus",
                               f"chronicCare/{cmd.condition_code}", patient_id)
            if previous != colour:
                await outbox.add(conn, events_pb2.ChronicCareColourChanged(
                    patient_id=patient_id, condition_code=cmd.condition_code, previous_colour=int(previous or 0),
                    colour=int(colour), managing_institution_id=manager.institution_id,
                    proposed_referral_id=proposed_id), aggregate_id=patient_id,
                    hospital_id=manager.lead_hospital_id or manager.institution_id)
        return api.ChronicCareStatus(
            patient_id=patient_id, condition_code=cmd.condition_code, colour=int(colour),
            previous_colour=int(previous or 0), managing_institution_id=manager.institution_id,
            proposed_referral=mapping.referral_name(proposed_id) if proposed_id else "", update_time=mapping.ts(now))

    @staticmethod
    async def _institution_at(conn, start: Institution, level: Level) -> Institution | None:
        """Walks up the membership tree (village -> township -> lead hospital)."""
        current: Institution | None = start
        for _ in range(3):
            if current is None or current.level >= level:
                break
            parent_id = current.parent_institution_id if level < Level.HOSPITAL and current.parent_institution_id \
                else current.lead_hospital_id
            current = await repo.get_institution(conn, parent_id) if parent_id != current.institution_id else None
        return current if current is not None and current.level == level else None


# Since when a referral of an SLA stage has been waiting (the lateral `w`, for the row `r`).
_SUBMITTED = "SELECT r.submitted_at AS since"
# Only up-referrals wait for scheduling: a down-referral has no hospital booking and stays
# accepted until the clinic records the visit. They wait from the last time they began to:
# the acceptance, a rebook after a no-show, a cancelled booking (back to accepted) or a
# booked referral waitlisted; not from accepted_at, which stays the first acceptance.
_WAITING = ("SELECT max(t.at) AS since FROM referral_transitions t WHERE t.referral_id = r.referral_id "
            "AND t.to_state IN (4, 6) AND t.from_state NOT IN (4, 6)")

_COLOUR_ZH = {rules.Colour.GREEN: "绿标（村级管理）", rules.Colour.YELLOW: "黄标（乡镇管理）",
              rules.Colour.RED: "红标（医院管理）"}
