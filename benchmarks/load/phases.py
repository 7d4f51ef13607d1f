"""The benchmark's phases: each returns plain numbers for the table and reports/bench.json."""
from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import nats

from common.v1 import event_pb2
from referral.v1 import referral_service_pb2 as api
from scheduling.v1 import events_pb2 as sev
from services.common import config
from services.common.localstack import free_port
from services.scheduling import demo as scheduling_demo

from ..demo.patients import up_referral
from ..demo.system import System, referral_id_of
from . import cpu
from .echo import METHOD

HOSPITAL = scheduling_demo.HOSPITAL


@dataclass
class Latencies:
    seconds: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0
    # CPU milliseconds per successful call, by part of the system (benchmarks.load.cpu)
    cpu_ms: dict[str, float] = field(default_factory=dict)

    def q(self, q: float) -> float:
        s = sorted(self.seconds)
        return s[min(len(s) - 1, int(q * len(s)))] * 1000 if s else float("nan")

    def summary(self) -> dict:
        return {"calls": len(self.seconds), "errors": self.errors, "seconds": round(self.elapsed, 2),
                "per_second": round(len(self.seconds) / self.elapsed, 1) if self.elapsed else 0.0,
                "p50_ms": round(self.q(.50), 2), "p95_ms": round(self.q(.95), 2), "p99_ms": round(self.q(.99), 2),
                "cpu_ms_per_call": self.cpu_ms}


async def closed_loop(call, concurrency: int, duration: float, cpu_roots: dict[str, int] | None = None
                      ) -> Latencies:
    """`concurrency` callers, each calling again as soon as its answer arrives; with
    `cpu_roots`, the CPU each of those processes (and their children) spent per call."""
    out = Latencies()
    before = cpu.snapshot(cpu_roots) if cpu_roots else None
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + duration

    async def caller(k: int) -> None:
        i = 0
        while loop.time() < end:
            t = time.perf_counter()
            try:
                await call(k, i)
                out.seconds.append(time.perf_counter() - t)
            except grpc.aio.AioRpcError:
                out.errors += 1
            i += 1
    await asyncio.gather(*(caller(k) for k in range(concurrency)))
    out.elapsed = loop.time() - start
    if before is not None:
        out.cpu_ms = cpu.per_call_ms(before, cpu.snapshot(cpu_roots), len(out.seconds))
    return out


def _requests(n: int, seed: int) -> list[tuple[str, api.CreateReferralRequest]]:
    """Built before the clock starts, so the client measures the server, not itself."""
    rng = random.Random(seed)
    from datetime import datetime

    from services.scheduling.domain import calendar
    today = calendar.local_date(datetime.now(calendar.LOCAL))
    out = []
    for i in range(n):
        clinic = scheduling_demo.CLINICS[i % len(scheduling_demo.CLINICS)]
        request, _ = up_referral(rng, clinic, HOSPITAL, today, with_admission=False)
        request.referral.justification = request.referral.justification or "需上级医院明确诊断"
        out.append((clinic, request))
    return out


BENCH_PROCESS = "benchmark process"  # the client, and the vendor fakes it hosts


def system_cpu_roots(system: System) -> dict[str, int]:
    roots = {svc: proc.pid for svc, proc in system.procs.items()}
    if system.stack is not None:
        postmaster = cpu.postmaster_pid(system.stack.postgres.pgdata)
        if postmaster is not None:
            roots["postgres"] = postmaster
        if system.stack.nats.proc is not None:
            roots["nats"] = system.stack.nats.proc.pid
    roots[BENCH_PROCESS] = os.getpid()
    return roots


async def create_phase(system: System, concurrency: int, duration: float, seed: int, *,
                       measure_cpu: bool = False) -> Latencies:
    pool = _requests(int(concurrency * duration * 40) + 100, seed)
    md = {c: system.metadata(c, "clinic_doctor") for c in scheduling_demo.CLINICS}
    stub = system.referral
    counter = iter(range(10**9))

    async def call(k: int, i: int) -> None:
        clinic, request = pool[next(counter) % len(pool)]
        request.request_id = f"bench-{seed}-{k}-{i}"
        await stub.CreateReferral(request, metadata=md[clinic])
    return await closed_loop(call, concurrency, duration, system_cpu_roots(system) if measure_cpu else None)


async def echo_phase(concurrency: int, duration: float, seed: int) -> Latencies:
    port = free_port()
    root = config.repo_root()
    # It runs on the services' event loop (services.common.app), which imports the generated protos.
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.load.echo", str(port)], cwd=root,
                            env={**os.environ, "PYTHONPATH": f"{root / 'gen'}:{root}"},
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        if not await asyncio.to_thread(proc.stdout.readline):
            raise RuntimeError(f"the echo service did not start (exit code {proc.wait(10)})")
        payload = _requests(1, seed)[0][1].SerializeToString()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary(METHOD)
            # Same metadata size as a real call: the token is part of what gRPC carries.
            md = (("authorization", "Bearer " + "x" * 600),)

            async def call(k: int, i: int) -> None:
                await echo(payload, metadata=md)
            return await closed_loop(call, concurrency, duration, {"echo server": proc.pid,
                                                                   BENCH_PROCESS: os.getpid()})
    finally:
        proc.terminate()
        proc.wait(10)


async def pgbench_phase(pgbench: str, database_url: str, clients: int, duration: float) -> dict:
    """One INSERT per transaction, committed durably (synchronous_commit as configured)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_commits (id bigserial PRIMARY KEY, "
                           "at timestamptz NOT NULL DEFAULT now(), payload text NOT NULL)")
        sync = await conn.fetchval("SHOW synchronous_commit")
        fsync = await conn.fetchval("SHOW fsync")
    finally:
        await conn.close()
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write("INSERT INTO bench_commits (payload) VALUES (repeat('x', 400));\n")
    cmd = [pgbench, "-n", "-f", script.name,
           "-c", str(clients), "-j", "2", "-T", str(max(1, int(duration))), database_url]
    out = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True)
    Path(script.name).unlink(missing_ok=True)
    tps = re.search(r"tps = ([0-9.]+)", out.stdout)
    lat = re.search(r"latency average = ([0-9.]+) ms", out.stdout)
    if not tps:
        raise RuntimeError(f"pgbench failed: {out.stderr or out.stdout}")
    return {"per_second": float(tps.group(1)), "latency_avg_ms": float(lat.group(1)) if lat else None,
            "clients": clients, "synchronous_commit": sync, "fsync": fsync}


async def drain(system: System, timeout: float = 180.0) -> float:
    """Seconds until the work the create phase left behind is done: every outbox relayed and
    no patient message due and unsent. The event phase measures a steady flow, so it starts
    on an idle system, not behind the create phase's thousands of queued messages."""
    conn = await asyncpg.connect(system.env["DATABASE_URL"])
    nc = await nats.connect(system.env["NATS_URL"])
    js = nc.jetstream()
    loop = asyncio.get_running_loop()
    start = loop.time()
    quiet = 0
    try:
        while loop.time() - start < timeout:
            busy = await conn.fetchval(
                "SELECT (SELECT count(*) FROM referral.outbox WHERE sent_at IS NULL)"
                " + (SELECT count(*) FROM scheduling.outbox WHERE sent_at IS NULL)"
                " + (SELECT count(*) FROM notify.outbox WHERE sent_at IS NULL)"
                " + (SELECT count(*) FROM notify.deliveries WHERE status IN ('PENDING', 'SENDING') AND due_at <= now())")
            for stream in await js.streams_info():  # events published but not yet consumed
                for consumer in await js.consumers_info(stream.config.name):
                    busy += consumer.num_pending + consumer.num_ack_pending
            quiet = quiet + 1 if busy == 0 else 0
            if quiet >= 3:  # idle for a second
                break
            await asyncio.sleep(0.5)
    finally:
        await conn.close()
        await nc.close()
    return round(loop.time() - start, 1)


async def event_phase(system: System, rate: float, duration: float, seed: int) -> dict:
    """Referrals created and accepted at a steady rate; when does the scheduler's event
    reach NATS, and when does the patient's WeChat message reach the vendor?"""
    requests = _requests(int(rate * duration) + 1, seed + 1)
    for _, r in requests:
        r.patient.wechat_openid = r.patient.wechat_openid or ("oBench" + r.request_id)[:28]
    desk = system.metadata(HOSPITAL, "referral_desk")
    created: dict[str, float] = {}
    scheduled: dict[str, float] = {}
    waitlisted: dict[str, str] = {}  # referral id -> reason code: no booking, no appointment message
    nc = await nats.connect(system.env["NATS_URL"])

    async def on_event(msg) -> None:
        env = event_pb2.EventEnvelope.FromString(msg.data)
        if env.event_type == sev.ReferralWaitlisted.DESCRIPTOR.full_name:
            why = sev.ReferralWaitlisted()
            env.payload.Unpack(why)
            waitlisted[env.aggregate_id] = why.reason_code
            return
        event = sev.ReferralScheduled()
        env.payload.Unpack(event)
        scheduled.setdefault(event.referral_id, time.time())
    subs = [await nc.subscribe(f"scheduling.v1.{kind}.>", cb=on_event)
            for kind in ("ReferralScheduled", "ReferralWaitlisted")]
    try:
        async def one(i: int, clinic: str, request) -> None:
            await asyncio.sleep(i / rate)
            request.request_id = f"bench-ev-{seed}-{i}"
            t = time.time()
            r = await system.referral.CreateReferral(request, metadata=system.metadata(clinic, "clinic_doctor"))
            created[r.name.split("/")[-1]] = t
            await system.referral.AcceptReferral(api.AcceptReferralRequest(name=r.name), metadata=desk)
        await asyncio.gather(*(one(i, c, r) for i, (c, r) in enumerate(requests)))
        deadline = time.time() + 15
        while time.time() < deadline:
            booked = {referral_id_of(m): m["t"] for m in system.wechat.accepted
                      if m["template_id"] in ("wx-tmpl-appointment", "wx-tmpl-admission")}
            if all(k in booked for k in created if k in scheduled) and len(scheduled) + len(
                    waitlisted.keys() & created.keys()) >= len(created):
                break
            await asyncio.sleep(0.2)
    finally:
        for sub in subs:
            await sub.unsubscribe()
        await nc.close()
    messages: dict[str, float] = {}
    for m in system.wechat.accepted:
        if m["template_id"] in ("wx-tmpl-appointment", "wx-tmpl-admission"):
            messages.setdefault(referral_id_of(m), m["t"])

    def stats(pairs: list[float]) -> dict:
        s = sorted(pairs)
        pick = lambda q: round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 1) if s else None  # noqa: E731
        return {"count": len(s), "p50_ms": pick(.5), "p99_ms": pick(.99)}
    return {
        "referrals": len(created), "rate_per_second": rate, "waitlisted": len(waitlisted.keys() & created.keys()),
        "waitlisted_reasons": dict(Counter(waitlisted[k] for k in created if k in waitlisted).most_common()),
        "create_to_scheduled": stats([scheduled[k] - created[k] for k in created if k in scheduled]),
        "create_to_message": stats([messages[k] - created[k] for k in created if k in messages]),
        "scheduled_to_message": stats([messages[k] - scheduled[k] for k in created if k in messages and k in scheduled]),
    }
