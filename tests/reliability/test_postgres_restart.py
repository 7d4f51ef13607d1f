"""PostgreSQL restarts under traffic: calls fail fast with UNAVAILABLE instead of hanging,
nothing is half-written, and the same service processes serve again once it is back."""
import asyncio
import time
from datetime import timedelta

import grpc

from tests.reliability.flows import databases, open_site, refer_and_accept, settled, three_services, \
    wait_outbox_drained
from tests.support.processes import call_retrying, started

WORKERS = 4
DOWN_SECONDS = 4.0
BOUND_SECONDS = 6.0


async def test_postgres_restart_during_traffic(rstack, report):
    postgres = rstack.stack.postgres
    services = three_services(rstack)
    referral, scheduling, _ = services
    began = time.monotonic()
    async with started(*services), open_site(rstack, referral, scheduling, places_per_day=10) as site:
        world = site.world
        md = world.md(world.clinics[0])
        calls: list[tuple[float, float, grpc.StatusCode, str]] = []  # start, seconds, code, request id
        sent = {}
        stop = asyncio.Event()

        async def traffic() -> None:
            while not stop.is_set():
                request = world.request()
                sent[request.request_id] = request
                began = time.monotonic()
                try:
                    # The client's deadline is far above the bound: what is measured is the server's.
                    await world.stub.CreateReferral(request, metadata=md, timeout=30)
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
                calls.append((began, time.monotonic() - began, code, request.request_id))
                if code != grpc.StatusCode.OK:
                    await asyncio.sleep(0.1)

        workers = [asyncio.create_task(traffic()) for _ in range(WORKERS)]
        down = starting = up = None
        try:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(postgres.stop)
            assert not postgres_running(postgres), "pg_ctl stop did not stop the server"
            down = time.monotonic()
            await asyncio.sleep(DOWN_SECONDS)
            starting = time.monotonic()
            await asyncio.to_thread(postgres.start)
            up = time.monotonic()
            while not any(c[2] == grpc.StatusCode.OK and c[0] > up for c in calls):
                assert time.monotonic() - up < 30, "the services did not recover"
                await asyncio.sleep(0.05)
            recovered = min(c[0] + c[1] for c in calls if c[2] == grpc.StatusCode.OK and c[0] > up) - up
        finally:
            stop.set()
            await asyncio.gather(*workers)
            if not postgres_running(postgres):
                await asyncio.to_thread(postgres.start)  # the server is shared by the whole folder

        # Every call the outage touched: in flight when it began, or started while it lasted.
        during = [c for c in calls if c[0] < starting and c[0] + c[1] > down]
        codes = {}
        for c in during:
            codes[c[2].name] = codes.get(c[2].name, 0) + 1
        longest = max((c[1] for c in during), default=0.0)
        # A failed create may or may not have committed; the client's retry settles it.
        for request_id in {c[3] for c in calls if c[2] != grpc.StatusCode.OK}:
            await call_retrying(world.stub.CreateReferral, sent[request_id], metadata=md)
        after = await refer_and_accept(world, 3)
        async with databases(rstack) as db:
            rows = await db.referral.fetch("SELECT request_id, referral_id FROM referrals "
                                           "WHERE sending_institution_id = $1", world.clinics[0])
            partial = await db.referral.fetchval(
                "SELECT count(*) FROM referrals r WHERE sending_institution_id = $1 AND (NOT EXISTS ("
                "SELECT 1 FROM outbox o WHERE o.aggregate_id = r.referral_id) OR NOT EXISTS ("
                "SELECT 1 FROM referral_transitions t WHERE t.referral_id = r.referral_id))", world.clinics[0])
            outcome = await settled(db, after, 30)
            left = await wait_outbox_drained(db.referral, db.scheduling, db.notify)
            # An event tried while the database was down must wait for it, not be given up on.
            dead = sum([await c.fetchval("SELECT count(*) FROM dead_letters WHERE created_at > now() - $1::interval",
                                         timedelta(seconds=time.monotonic() - began))
                        for c in (db.scheduling, db.notify)])
        restarted = [p.service for p in services if not p.alive or p.starts != 1]

    acknowledged = {c[3] for c in calls if c[2] == grpc.StatusCode.OK}
    stored = {r["request_id"] for r in rows}
    report("calls the outage touched, by code", codes)
    report("longest call the outage touched (s)", round(longest, 2))
    report("seconds from PostgreSQL up to the first OK", round(recovered, 2))
    report("acknowledged but missing", len(acknowledged - stored))
    report("partial writes (referral without its event or history)", partial)
    report("duplicates", len(rows) - len(stored))
    report("services restarted to recover", len(restarted))
    report("events after recovery missing downstream", outcome.missing)
    report("events dead-lettered by the outage", dead)
    assert during, "no call was made while PostgreSQL was down"
    assert set(codes) <= {"UNAVAILABLE", "OK"} and codes.get("UNAVAILABLE"), codes
    assert longest < BOUND_SECONDS
    assert not acknowledged - stored and not set(sent) - stored and partial == 0 and len(rows) == len(stored)
    assert not restarted and dead == 0 and outcome.missing == 0 and outcome.duplicated == 0 and left == 0


def postgres_running(postgres) -> bool:
    return (postgres.pgdata / "postmaster.pid").exists()
