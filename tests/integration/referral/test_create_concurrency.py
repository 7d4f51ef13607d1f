"""CreateReferral writes everything in one statement (services.create): concurrent creates of
one patient's episode, repeated request ids and the change log must come out as if the
creates had run one after another."""
import asyncio

from referral.v1 import referral_service_pb2 as api


async def test_concurrent_creates_of_one_episode_add_up_and_repeats_return_the_first(world, referral_app):
    pool = referral_app.ctx.pool
    clinic = world.clinics[0]
    first = world.request()
    first.deductible_paid_fen = 100
    up = await world.stub.CreateReferral(first, metadata=world.md(clinic))
    episode = up.billing.episode_id
    assert episode and up.billing.deductible_paid_fen == 100

    requests = []
    for _ in range(12):
        r = world.request(code="I63.8")
        r.patient.CopyFrom(first.patient)
        r.deductible_paid_fen = 100
        requests.append(r)
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
