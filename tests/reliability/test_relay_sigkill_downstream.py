"""The real referral service, its relay SIGKILLed right after a PubAck and before
mark-sent, again and again, while the real scheduling and notify services consume:
every event has its downstream effect, once."""
import asyncio

from tests.reliability.flows import databases, open_site, refer_and_accept, settled, stream_events, three_services, \
    wait_outbox_drained
from tests.support.processes import started

REFERRALS = 30
# Acknowledged publishes before each SIGKILL; each kill leaves its whole batch published
# but unmarked, so all of it is published again by the next process.
KILL_AFTER = [4, 7, 3, 6, 5]
# Counted: the referrals' own events, not the membership events that setting up the site
# publishes (a kill during the set-up would fail the set-up, not test the relay).
COUNTED = "referral.v1.Referral"


async def test_relay_sigkilled_between_publish_and_mark_sent(rstack, report):
    referral, scheduling, notify = three_services(rstack, "tests.support.faulty_service", ("referral",),
                                                  FAULT_KILL_AFTER_PUBLISHES=str(KILL_AFTER[0]),
                                                  FAULT_COUNTED_SUBJECTS=COUNTED)
    kills = 0
    stop = asyncio.Event()

    async def supervise() -> None:
        """Start the referral service again after each SIGKILL, as an orchestrator would."""
        nonlocal kills
        while not stop.is_set():
            code = await referral.wait_exit(0.3)
            if code is None:
                continue
            assert code == -9, f"referral exited with {code}"
            kills += 1
            following = KILL_AFTER[kills] if kills < len(KILL_AFTER) else 0
            try:
                await referral.start(FAULT_KILL_AFTER_PUBLISHES=str(following))
            except RuntimeError:
                pass  # killed again while starting: its backlog alone reached the limit

    async with started(referral, scheduling, notify), databases(rstack) as db:
        guard = asyncio.create_task(supervise())
        try:
            async with open_site(rstack, referral, scheduling, places_per_day=REFERRALS) as site:
                ids = await asyncio.wait_for(refer_and_accept(site.world, REFERRALS), 120)
            outcome = await settled(db, ids, 60)
            left = await wait_outbox_drained(db.referral, db.scheduling, db.notify)
        finally:
            stop.set()
            await guard
        on_stream = await stream_events(rstack, f"referral.v1.*.{site.hospital}")

    report("referrals created and accepted", REFERRALS)
    report("relay SIGKILLs between publish and mark-sent", kills)
    report("events missing downstream", outcome.missing)
    report("duplicated effects", outcome.duplicated)
    report("referral events on the stream (distinct)", f"{len(on_stream)} ({len(set(on_stream))})")
    report("outbox rows unsent at the end", left)
    assert kills == len(KILL_AFTER)
    assert outcome.missing == 0, outcome
    assert outcome.duplicated == 0, outcome
    assert len(on_stream) == len(set(on_stream)) and left == 0
