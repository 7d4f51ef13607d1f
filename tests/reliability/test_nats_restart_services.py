"""nats-server restarts under the three running services: how long until events flow
again, and whether any event written meanwhile is stranded."""
import asyncio
import time

from tests.reliability.flows import databases, downstream, open_site, refer_and_accept, settled, three_services, \
    wait_outbox_drained
from tests.support.processes import started, until

BEFORE, DURING = 5, 10


async def test_nats_restart_under_running_consumers(rstack, report):
    nats = rstack.stack.nats
    services = three_services(rstack)
    referral, scheduling, _ = services
    async with started(*services), open_site(rstack, referral, scheduling, places_per_day=BEFORE + DURING) as site, \
            databases(rstack) as db:
        warm = await refer_and_accept(site.world, BEFORE)
        assert (await settled(db, warm, 30)).missing == 0, "events did not flow before the restart"

        await asyncio.to_thread(nats.stop)
        try:
            # The referral API needs only its database: these commit, their events wait in the outbox.
            written = await asyncio.wait_for(refer_and_accept(site.world, DURING), 60)
            waiting = await db.referral.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        finally:
            await asyncio.to_thread(nats.start)
        back = time.monotonic()
        first = await until(lambda: _any_booked(db, written), 60, interval=0.1)
        resumed = time.monotonic() - back
        outcome = await settled(db, written, 60)
        all_done = time.monotonic() - back
        left = await wait_outbox_drained(db.referral, db.scheduling, db.notify)
        alive = [p.service for p in services if p.alive and p.starts == 1]

    report("events written while nats-server was down", waiting)
    report("seconds until consumption resumes", round(resumed, 2))
    report("seconds until every waiting event's effects landed", round(all_done, 2))
    report("messages stranded", outcome.missing)
    report("duplicated effects", outcome.duplicated)
    assert first, "no event was consumed after nats-server came back"
    assert waiting >= DURING and outcome.missing == 0 and outcome.duplicated == 0 and left == 0
    assert len(alive) == 3, "a service had to be restarted"


async def _any_booked(db, referral_ids) -> bool:
    return len((await downstream(db, referral_ids)).missing_bookings) < len(referral_ids)
