"""SIGKILL the referral service in the middle of a burst of creates: the clients retry
with the same request ids, and the database keeps every acknowledged referral once."""
import asyncio
import time

from tests.reliability.flows import REFERRAL_ENV, databases, open_site, stream_events, wait_outbox_drained
from tests.support.processes import ServiceProcess, call_retrying, started, until

BURST = 300
CONCURRENCY = 24


async def test_sigkill_referral_during_create_burst(rstack, report):
    referral = ServiceProcess(rstack, "referral", **REFERRAL_ENV)
    async with started(referral), open_site(rstack, referral) as site, databases(rstack) as db:
        world = site.world
        clinic = world.clinics[0]
        requests = [world.request() for _ in range(BURST)]
        acknowledged: dict[str, str] = {}
        retried: list = []
        gate = asyncio.Semaphore(CONCURRENCY)

        async def create(request) -> None:
            async with gate:
                reply = await call_retrying(world.stub.CreateReferral, request, metadata=world.md(clinic),
                                            retries=retried)
                acknowledged[request.request_id] = reply.name.split("/")[1]

        burst = [asyncio.create_task(create(r)) for r in requests]
        try:
            assert await until(lambda: len(acknowledged) >= BURST // 4, 60, interval=0.02)
            in_flight = BURST - len(acknowledged)
            killed_at = time.monotonic()
            assert referral.kill() == -9
            await referral.start()
            restarted = time.monotonic() - killed_at
            await asyncio.wait_for(asyncio.gather(*burst), 120)
        finally:
            for task in burst:
                task.cancel()

        rows = await db.referral.fetch("SELECT request_id, referral_id FROM referrals WHERE sending_institution_id = $1",
                                       clinic)
        stored: dict[str, list[str]] = {}
        for r in rows:
            stored.setdefault(r["request_id"], []).append(r["referral_id"])
        missing = [rid for rid in acknowledged if rid not in stored]
        # Two rows for one request id, or an answer naming another referral than the stored one.
        duplicates = (len(rows) - len(stored)) + sum(stored.get(rid, [ref])[0] != ref for rid, ref in acknowledged.items())
        strangers = len(set(stored) - {r.request_id for r in requests})
        ids = [r["referral_id"] for r in rows]
        without_event = await db.referral.fetchval(
            "SELECT count(*) FROM unnest($1::text[]) AS r(id) WHERE NOT EXISTS (SELECT 1 FROM outbox o "
            "WHERE o.aggregate_id = r.id AND o.event_type = 'referral.v1.ReferralSubmitted')", ids)
        never_published = await wait_outbox_drained(db.referral)
        on_stream = await stream_events(rstack, f"referral.v1.ReferralSubmitted.{world.hospital}")

    report("creates sent", BURST)
    report("acknowledged", len(acknowledged))
    report("not yet acknowledged at SIGKILL", in_flight)
    report("retried calls (UNAVAILABLE/DEADLINE_EXCEEDED)", len(retried))
    report("seconds from SIGKILL to serving again", round(restarted, 2))
    report("acknowledged but missing", len(missing))
    report("duplicates", duplicates)
    report("outbox rows never published after restart", never_published)
    report("referrals without their event", without_event)
    report("ReferralSubmitted messages on the stream (distinct)", f"{len(on_stream)} ({len(set(on_stream))})")
    assert len(acknowledged) == BURST and not missing and duplicates == 0 and strangers == 0
    assert without_event == 0 and never_published == 0 and len(on_stream) == len(set(on_stream)) == BURST
