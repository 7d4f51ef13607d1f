"""CreateReferral writes everything in one statement (services.create): concurrent creates of
one patient's episode, repeated request ids and the change log must come out as if the
creates had run one after another."""
import asyncio

from referral.v1 import referral_service_pb2 as api
from services.referral.adapters import repository as repo
from tests.support.metrics import metric


def _same_patient(world, first, code: str, n: int) -> list:
    """`n` requests for `first`'s patient, in the category of `code`, 100 fen each."""
    out = []
    for _ in range(n):
        r = world.request(code=code)
        r.patient.CopyFrom(first.patient)
        r.deductible_paid_fen = 100
        out.append(r)
    return out


async def test_concurrent_creates_of_one_episode_add_up_and_repeats_return_the_first(world, referral_app):
    pool = referral_app.ctx.pool
    clinic = world.clinics[0]
    first = world.request()
    first.deductible_paid_fen = 100
    up = await world.stub.CreateReferral(first, metadata=world.md(clinic))
    episode = up.billing.episode_id
    assert episode and up.billing.deductible_paid_fen == 100

    requests = _same_patient(world, first, "I63.8", 12)
    repeats = [requests[0], requests[0], requests[1]]  # the same request ids again, at the same time
    made = await asyncio.gather(*(world.stub.CreateReferral(r, metadata=world.md(clinic))
                                  for r in [*requests, *repeats]))
    fresh, again = made[:12], made[12:]
    assert {m.billing.episode_id for m in made} == {episode}
    # Each create saw the total as it was right after it: every step of 100 exactly once.
    assert sorted({m.name: m.billing.deductible_paid_fen for m in fresh}.values()) == list(range(200, 1400, 100))
    assert len({m.name for m in fresh}) == 12
    by_request = {r.request_id: m.name for r, m in zip(requests, fresh)}
    assert [m.name for m in again] == [by_request[requests[0].request_id], by_request[requests[0].request_id],
                                       by_request[requests[1].request_id]]
    assert await pool.fetchval("SELECT deductible_paid_fen FROM episodes WHERE episode_id = $1", episode) == 1300

    ids = [m.name.split("/")[1] for m in [up, *fresh]]
    # One referral row, two transitions, one event, one change-log row and a create audit row per create.
    assert await pool.fetchval("SELECT count(*) FROM referrals WHERE referral_id = ANY($1::text[])", ids) == 13
    assert await pool.fetchval("SELECT count(*) FROM referral_transitions WHERE referral_id = ANY($1::text[])",
                               ids) == 26
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE aggregate_id = ANY($1::text[])", ids) == 13
    seqs = [r["seq"] for r in await pool.fetch(
        "SELECT seq FROM referral_changes WHERE consortium_id = $1 AND referral_id = ANY($2::text[]) ORDER BY seq",
        world.consortium, ids)]
    assert len(seqs) == 13 and seqs == list(range(seqs[0], seqs[0] + 13))
    assert await pool.fetchval("SELECT max(seq) FROM referral_changes WHERE consortium_id = $1",
                               world.consortium) == await pool.fetchval(
        "SELECT change_seq FROM consortiums WHERE consortium_id = $1", world.consortium)
    audits = await pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'CreateReferral' "
                                 "AND resource = ANY($1::text[])", [f"referrals/{i}" for i in ids])
    assert audits == 13 + len(repeats)
    # The watch replays them in sequence order with the referral as the create answered it.
    changes = await pool.fetch("SELECT payload FROM referral_changes WHERE consortium_id = $1 "
                               "AND referral_id = ANY($2::text[]) ORDER BY seq", world.consortium, ids)
    views = {api.WatchReferralsResponse.FromString(c["payload"]).referral.name:
             api.WatchReferralsResponse.FromString(c["payload"]).referral for c in changes}
    for m in [up, *fresh]:
        assert views[m.name] == m


async def test_one_batch_of_creates_keeps_each_create_s_outcome(world, referral_app):
    """Creates started together share one read and one write statement (services.common.batching):
    a repeated request id, a request id used twice inside the batch and two creates of one
    episode must each come out as if the creates had run one after another."""
    from services.common.auth import Caller, Role
    from services.referral.adapters import requests as parse
    from services.referral.service_layer.services import ReferralService

    ctx = referral_app.ctx
    svc = ReferralService(ctx.pool, ctx.pii)
    clinic = world.clinics[0]
    caller = Caller("dr-batch", clinic, Role.CLINIC_DOCTOR)

    def command(request):
        return parse.create_referral(request, caller.subject, svc.clock())

    earlier = world.request()
    earlier.deductible_paid_fen = 100
    first = await svc.create(caller, command(earlier))   # also fills the catalogue cache
    same_episode = _same_patient(world, earlier, "I63.9", 2)
    fresh = [world.request() for _ in range(5)]
    twice = world.request()
    batch = [*fresh, twice, twice, earlier, *same_episode]

    def batches(name: str) -> float:
        return metric("db_batch_size_count", batcher=name)

    reads, writes = batches("referral_create_context"), batches("referral_create")
    made = await asyncio.gather(*(svc.create(caller, command(r)) for r in batch))
    # All ten read in one statement; the nine that write, in one batch (and, because two of
    # them move one episode, then one at a time).
    assert batches("referral_create_context") - reads == 1
    assert batches("referral_create") - writes >= 1

    ids = [m.id for m in made]
    assert len(set(ids[:6])) == 6 and ids[6] == ids[5] and ids[7] == first.id
    totals = sorted(m.billing.deductible_paid_fen for m in made[8:])
    assert {m.billing.episode_id for m in made[8:]} == {first.billing.episode_id} and totals == [200, 300]
    assert await ctx.pool.fetchval("SELECT deductible_paid_fen FROM episodes WHERE episode_id = $1",
                                   first.billing.episode_id) == 300
    written = list({*ids, first.id})
    assert await ctx.pool.fetchval("SELECT count(*) FROM referrals WHERE referral_id = ANY($1::text[])",
                                   written) == 9
    assert await ctx.pool.fetchval("SELECT count(*) FROM outbox WHERE aggregate_id = ANY($1::text[])", written) == 9
    seqs = [r["seq"] for r in await ctx.pool.fetch(
        "SELECT seq FROM referral_changes WHERE referral_id = ANY($1::text[]) ORDER BY seq", written)]
    assert seqs == list(range(seqs[0], seqs[0] + 9))


async def test_creates_wait_for_the_consortiums_creates_lock_before_writing(world, referral_app):
    """Concurrent creates of one consortium could deadlock (one holding a repeated request
    id's unique entry and waiting for the episode row, the other the reverse: seen about
    once in 30 runs of the test above). Every create takes the consortium's creates lock
    before it writes anything, so they queue instead."""
    pool = referral_app.ctx.pool
    async with pool.acquire() as conn, conn.transaction():
        await repo.lock_creates(conn, world.consortium)
        call = asyncio.ensure_future(world.stub.CreateReferral(world.request(), metadata=world.md(world.clinics[0])))

        async def blocked() -> bool:
            return await pool.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                                       "AND classid = $1::bigint::oid", repo._CREATES_LOCK) == 1
        for _ in range(200):
            if await blocked():
                break
            await asyncio.sleep(0.05)
        assert await blocked() and not call.done()
    made = await call  # and once the lock is released, the create goes through
    assert made.name.startswith("referrals/")


def _first_of_episode(world, n: int, fen: int) -> list:
    """`n` create requests for one patient never referred before, in category E11."""
    first = world.request(code="E11", justification="血糖控制不佳，需上级医院调整方案")
    requests = []
    for _ in range(n):
        r = world.request(code="E11", justification=first.referral.justification)
        r.patient.CopyFrom(first.patient)
        r.deductible_paid_fen = fen
        requests.append(r)
    return requests


async def _episodes_of(pool, referral) -> list:
    """The E11 episodes of `referral`'s patient (an API or a domain referral), oldest first."""
    return await pool.fetch("SELECT * FROM episodes WHERE patient_id = $1 AND icd_category = 'E11' "
                            "ORDER BY created_at", referral.patient.patient_id)


async def _creates_lock_waiters(pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                               "AND classid = $1::bigint::oid", repo._CREATES_LOCK)


async def _until(condition, what: str) -> None:
    for _ in range(200):
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_concurrent_first_referrals_of_a_patient_share_one_new_episode(world, referral_app):
    """Two first referrals of one patient and category, started together (one batch), each
    paying 50,000 fen: one episode of 100,000, not two of 50,000 (the patient would pay the
    deductible again on the next referral)."""
    pool = referral_app.ctx.pool
    clinic = world.clinics[0]
    made = await asyncio.gather(*(world.stub.CreateReferral(r, metadata=world.md(clinic))
                                  for r in _first_of_episode(world, 2, 50_000)))
    [episode] = await _episodes_of(pool, made[0])
    assert {m.billing.episode_id for m in made} == {episode["episode_id"]}
    assert episode["deductible_paid_fen"] == 100_000
    assert sorted(m.billing.deductible_paid_fen for m in made) == [50_000, 100_000]


async def test_first_referrals_that_both_read_no_episode_converge_on_one(world, referral_app):
    """Two creates in different batches (two service instances) that both read "no episode"
    before either writes: the second write finds the first's episode (the open-episode
    unique index) and retries under the episode lock instead of opening another."""
    from services.common.auth import Caller, Role
    from services.referral.adapters import requests as parse
    from services.referral.service_layer.services import ReferralService

    ctx = referral_app.ctx
    pool = ctx.pool
    caller = Caller("dr-race", world.clinics[0], Role.CLINIC_DOCTOR)
    services = [ReferralService(pool, ctx.pii), ReferralService(pool, ctx.pii)]
    requests = _first_of_episode(world, 2, 50_000)
    async with pool.acquire() as conn, conn.transaction():
        await repo.lock_creates(conn, world.consortium)
        calls = [asyncio.ensure_future(svc.create(caller, parse.create_referral(r, caller.subject, svc.clock())))
                 for svc, r in zip(services, requests)]

        async def both_read_and_wait() -> bool:
            return await _creates_lock_waiters(pool) == 2
        await _until(both_read_and_wait, "both creates to wait for the creates lock")
    made = await asyncio.gather(*calls)
    [episode] = await _episodes_of(pool, made[0])
    assert {m.billing.episode_id for m in made} == {episode["episode_id"]}
    assert episode["deductible_paid_fen"] == 100_000
    assert sorted(m.billing.deductible_paid_fen for m in made) == [50_000, 100_000]


async def test_a_lapsed_episode_is_closed_by_the_referral_that_opens_the_next(world, referral_app):
    pool = referral_app.ctx.pool
    clinic = world.clinics[0]
    first, *later = _first_of_episode(world, 3, 50_000)
    old = await world.stub.CreateReferral(first, metadata=world.md(clinic))
    # 200 days without a referral: past the 180-day episode window.
    await pool.execute("UPDATE episodes SET last_activity_at = now() - interval '200 days' WHERE episode_id = $1",
                       old.billing.episode_id)
    made = await asyncio.gather(*(world.stub.CreateReferral(r, metadata=world.md(clinic)) for r in later))
    closed, current = await _episodes_of(pool, old)
    assert closed["episode_id"] == old.billing.episode_id and closed["closed_at"] is not None
    assert current["closed_at"] is None and current["deductible_paid_fen"] == 100_000
    assert {m.billing.episode_id for m in made} == {current["episode_id"]}


async def test_a_chronic_care_proposal_and_a_create_share_the_new_episode(world, referral_app):
    """A colour change proposes a draft referral in the patient's episode of the condition;
    started while a create of the same new patient and category is writing, it must not
    open a second episode."""
    pool = referral_app.ctx.pool
    [request] = _first_of_episode(world, 1, 50_000)
    async with pool.acquire() as conn, conn.transaction():
        await repo.lock_creates(conn, world.consortium)
        create = asyncio.ensure_future(world.stub.CreateReferral(request, metadata=world.md(world.clinics[0])))

        async def create_waits() -> bool:
            return await _creates_lock_waiters(pool) == 1
        await _until(create_waits, "the create to wait for the creates lock")
        # Village, green to yellow: a draft up-referral to the township centre.
        await world.stub.UpdateChronicCareStatus(api.UpdateChronicCareStatusRequest(
            patient=request.patient, condition_code="E11", colour=1), metadata=world.md(world.village))
        chronic = asyncio.ensure_future(world.stub.UpdateChronicCareStatus(api.UpdateChronicCareStatusRequest(
            patient=request.patient, condition_code="E11", colour=2, reason="血糖控制不佳"),
            metadata=world.md(world.village)))

        async def chronic_done_or_waits() -> bool:
            return chronic.done() or await _creates_lock_waiters(pool) == 2
        await _until(chronic_done_or_waits, "the chronic-care update to finish or wait")
    made, status = await create, await chronic
    proposed = await world.stub.GetReferral(api.GetReferralRequest(name=status.proposed_referral),
                                            metadata=world.md(world.village))
    [episode] = await _episodes_of(pool, made)
    assert made.billing.episode_id == proposed.billing.episode_id == episode["episode_id"]
    assert episode["deductible_paid_fen"] == 50_000
