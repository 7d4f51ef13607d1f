"""Read-only use cases: the rules dry run and the consortium office's indicators."""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

from referral.v1 import referral_service_pb2 as api, types_pb2 as rtypes
from services.common import audit
from services.common.auth import Caller, Role
from services.common.errors import NotFound, Violations
from services.referral.adapters import mapping, repository as repo
from services.referral.domain import rules
from services.referral.domain.model import Direction, Purpose
from services.referral.service_layer.services import ReferralService

CHINA = timezone(timedelta(hours=8))


async def check_rules(svc: ReferralService, caller: Caller, *, id_number: str, code: str, direction: Direction,
                      receiving_id: str, needs: list, results: list, purpose: Purpose
                      ) -> api.CheckReferralRulesResponse:
    now = svc.clock()
    async with svc.pool.acquire() as conn:
        scope = await svc.scope(conn, caller)
        violations = Violations()
        sender = await repo.get_institution(conn, caller.institution_id)
        receiver = await repo.get_institution(conn, receiving_id)
        if receiver is None or receiver.consortium_id != scope.consortium_id:
            violations.add("receiving_institution_id", "接收机构不存在或不属于本医联体")
        if sender is None:
            violations.add("receiving_institution_id", "调用方机构不是医联体成员")
        violations.raise_if_any()
        assert sender is not None and receiver is not None
        settings = await repo.get_consortium(conn, scope.consortium_id)
        catalogue = await repo.catalogue(conn, scope.consortium_id)
        episode = None
        if id_number:
            patient_id = svc.pii.lookup_hash(id_number)
            episode = await repo.open_episode(conn, scope.consortium_id, patient_id, code[:3])
            if episode is not None and not rules.episode_continues(episode["last_activity_at"], now):
                episode = None  # the next referral opens a new one
            # The dry run reads the patient's billing episode: that is a read of patient data.
            await audit.record(conn, caller, "CheckReferralRules", f"episodes/{code[:3]}", patient_id)
    assert settings is not None
    verdict = rules.evaluate(catalogue, code, direction, sender.level, receiver.level)
    rules.recognise_results(needs, results, settings.exam_validity, now.date())
    terms = rules.billing_terms(direction, purpose, needs)
    entry = verdict.catalogue_entry
    # A dry run is "allowed" when only the justification is missing: the sender can add it.
    return api.CheckReferralRulesResponse(
        allowed=not rules.check_direction(direction, sender.level, receiver.level), reasons=list(verdict.reasons), justification_required=verdict.justification_required,
        catalogue_disease=entry is not None and sender.level >= entry.level,
        catalogue_disease_name=entry.name if entry else "", catalogue_level=int(entry.level) if entry else 0,
        down_referral_recommended=verdict.down_referral_recommended,
        prior_results=[mapping.result_proto(r) for r in results], needs=[mapping.need_proto(n) for n in needs],
        billing=rtypes.BillingContinuity(episode_id=episode["episode_id"] if episode else "",
                                      deductible_paid_fen=episode["deductible_paid_fen"] if episode else 0,
                                      deductible_carried=terms.deductible_carried,
                                      deductible_waived=terms.deductible_waived, receiving_level=int(receiver.level)),
        catalogue_version=catalogue.version)


# Returns and no-shows are read from the history: a rebook after a no-show (or a
# resubmission after a return) moves the state on, but the patient still missed the visit.
# accepted_at and scheduled_at are the first acceptance and booking (Referral.rebook).
_STATS_SQL = """
WITH r AS (
    SELECT r.*, h.returned, h.no_show, h.visit FROM referrals r
    CROSS JOIN LATERAL (SELECT bool_or(t.to_state = 3) AS returned, bool_or(t.to_state = 11) AS no_show,
                               bool_or(t.to_state IN (8, 11)) AS visit
                        FROM referral_transitions t WHERE t.referral_id = r.referral_id) h
    WHERE r.consortium_id = $1 AND r.submitted_at >= $2 AND r.submitted_at < $3
)
SELECT
    count(*) FILTER (WHERE direction = 1) AS up_count,
    count(*) FILTER (WHERE direction = 2) AS down_count,
    count(*) AS total,
    count(*) FILTER (WHERE state = 5) AS rejected,
    count(*) FILTER (WHERE returned) AS returned,
    count(*) FILTER (WHERE no_show) AS no_show,
    count(*) FILTER (WHERE visit) AS visits,
    count(accepted_at) AS accepted_n,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM accepted_at - submitted_at))
        FILTER (WHERE accepted_at IS NOT NULL) AS accept_p50,
    percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM accepted_at - submitted_at))
        FILTER (WHERE accepted_at IS NOT NULL) AS accept_p90,
    count(scheduled_at) AS scheduled_n,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM scheduled_at - accepted_at))
        FILTER (WHERE scheduled_at IS NOT NULL) AS sched_p50,
    percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM scheduled_at - accepted_at))
        FILTER (WHERE scheduled_at IS NOT NULL) AS sched_p90,
    count(DISTINCT patient_id) FILTER (WHERE direction = 1) AS up_patients,
    count(DISTINCT patient_id) FILTER (WHERE direction = 1 AND state <> 5) AS kept_patients
FROM r
"""

_GROUP_SQL = """
SELECT {key} AS key, count(*) FILTER (WHERE direction = 1) AS up, count(*) FILTER (WHERE direction = 2) AS down
FROM referrals WHERE consortium_id = $1 AND submitted_at >= $2 AND submitted_at < $3
GROUP BY 1 ORDER BY 1
"""


def period_bounds(start: date, end: date) -> tuple[datetime, datetime]:
    return (datetime.combine(start, time(), CHINA), datetime.combine(end + timedelta(days=1), time(), CHINA))


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


async def stats(svc: ReferralService, caller: Caller, consortium_id: str, start: date, end: date) -> api.ReferralStats:
    caller.require(Role.CONSORTIUM_OFFICE)
    frm, to = period_bounds(start, end)
    async with svc.pool.acquire() as conn:
        scope = await svc.scope(conn, caller)
        if scope.consortium_id != consortium_id:
            raise NotFound(f"医联体 {consortium_id} 不存在", reason="CONSORTIUM_NOT_FOUND")
        row = await conn.fetchrow(_STATS_SQL, consortium_id, frm, to)
        clinic_key = "CASE direction WHEN 1 THEN sending_institution_id ELSE receiving_institution_id END"
        clinics = await conn.fetch(_GROUP_SQL.format(key=clinic_key), consortium_id, frm, to)
        departments = await conn.fetch(_GROUP_SQL.format(key="department"), consortium_id, frm, to)

    def hours(seconds) -> float:
        # Not rounded: a scheduler answering in 0.2 s would read as 0.00 h.
        return (seconds or 0.0) / 3600

    return api.ReferralStats(
        consortium=f"consortiums/{consortium_id}", up_count=row["up_count"], down_count=row["down_count"],
        by_clinic=[api.ReferralCount(key=r["key"], up_count=r["up"], down_count=r["down"]) for r in clinics],
        by_department=[api.ReferralCount(key=r["key"], up_count=r["up"], down_count=r["down"]) for r in departments],
        acceptance=api.DurationStats(count=row["accepted_n"], median_hours=hours(row["accept_p50"]),
                                     p90_hours=hours(row["accept_p90"])),
        scheduling=api.DurationStats(count=row["scheduled_n"], median_hours=hours(row["sched_p50"]),
                                     p90_hours=hours(row["sched_p90"])),
        rejected_share=_share(row["rejected"], row["total"]), returned_share=_share(row["returned"], row["total"]),
        no_show_share=_share(row["no_show"], row["visits"]),
        kept_inside_share=_share(row["kept_patients"], row["up_patients"]))


__all__ = ["check_rules", "stats"]
