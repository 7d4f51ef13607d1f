"""`make bench`: the running system under load on this machine, beside its ceilings.

Starts everything in a fresh data folder (like `make demo`), loads the DEMO consortium
and runs, each for a fixed time: CreateReferral from N concurrent callers; the same
client against a trivial grpc.aio echo service (Python gRPC's ceiling here); pgbench
inserting one row per transaction (the durable-commit ceiling here); referrals created
and accepted at a steady rate, timed to the scheduler's event and the patient's
message. Prints a table and writes reports/bench.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from services.common import app, config

from ..demo.system import System
from .phases import create_phase, drain, echo_phase, event_phase, pgbench_phase

# What the services run with during the benchmark; INFO logs one JSON line per call.
BENCH_ENV = {"LOG_LEVEL": "WARNING", "OUTBOX_POLL_SECONDS": "0.5", "SCHEDULER_TIME_LIMIT_SECONDS": "1",
             "SCHEDULING_RELEASE_POLL_SECONDS": "3600", "NOTIFY_SMS_MIN_SPACING_SECONDS": "0"}
TARGETS = {"create_vs_echo": 0.5, "create_p99_ms": 50.0, "event_to_message_p99_ms": 1000.0}


async def run(args) -> dict:
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="consortium-bench-"))
    try:
        print("starting PostgreSQL, NATS, the three services and the vendor fakes ...", file=sys.stderr, flush=True)
        async with System(data_dir, {**BENCH_ENV, **dict(kv.split("=", 1) for kv in args.env)}) as system:
            await system.load_demo()
            say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
            say(f"echo ceiling: {args.concurrency} callers, {args.duration:g} s")
            echo = await echo_phase(args.concurrency, args.duration, args.seed)
            say(f"pgbench: {args.pg_clients} clients, {args.duration:g} s")
            pg = await pgbench_phase(system.stack.postgres.bin("pgbench") if system.stack else "pgbench",
                                     system.env["DATABASE_URL"], args.pg_clients, args.duration)
            if args.warmup:
                say(f"CreateReferral warm-up: {args.concurrency} callers, {args.warmup:g} s")
                await create_phase(system, args.concurrency, args.warmup, args.seed + 7)
            # The latency a caller sees below saturation, beside the fixed concurrency's.
            light = {}
            for callers in args.light:
                say(f"CreateReferral: {callers} callers, {args.light_duration:g} s")
                light[str(callers)] = (await create_phase(system, callers, args.light_duration,
                                                          args.seed + 11 + callers)).summary()
            say(f"CreateReferral: {args.concurrency} callers, {args.duration:g} s")
            create = await create_phase(system, args.concurrency, args.duration, args.seed, measure_cpu=True)
            say("waiting for the create phase's events and messages to drain ...")
            drained = await drain(system)
            say(f"create -> scheduled -> message: {args.event_rate:g}/s for {args.duration:g} s")
            events = await event_phase(system, args.event_rate, args.duration, args.seed)
            events["started_after_drain_seconds"] = drained
            memory = system.peak_memory_kib()
    finally:
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    c, e = create.summary(), echo.summary()
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "duration_seconds": args.duration, "concurrency": args.concurrency,
        "create_referral": c, "create_by_concurrency": {**light, str(args.concurrency): c}, "echo_ceiling": e, "pgbench_ceiling": pg, "events": events,
        "peak_memory_mib": {k: round(v / 1024, 1) for k, v in memory.items()},
        "ratios": {"create_vs_echo": round(c["per_second"] / e["per_second"], 3) if e["per_second"] else None,
                   "create_vs_pgbench": round(c["per_second"] / pg["per_second"], 3) if pg["per_second"] else None},
    }
    ev = events["scheduled_to_message"]["p99_ms"]
    result["targets"] = {
        "create_vs_echo >= 0.5": result["ratios"]["create_vs_echo"] is not None
        and result["ratios"]["create_vs_echo"] >= TARGETS["create_vs_echo"],
        f"create p99 < 50 ms at {args.concurrency} callers": c["p99_ms"] < TARGETS["create_p99_ms"],
        "event-to-message p99 < 1 s": ev is not None and ev < TARGETS["event_to_message_p99_ms"],
    }
    return result


def table(r: dict) -> str:
    c, e, pg, ev = r["create_referral"], r["echo_ceiling"], r["pgbench_ceiling"], r["events"]
    rows = [
        f"Load benchmark — {r['machine']['cpus']} CPUs, Python {r['machine']['python']}, "
        f"{r['duration_seconds']:g} s per phase, {r['concurrency']} concurrent callers",
        "",
        f"{'':<34}{'calls/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}{'ratio':>8}",
        f"{'CreateReferral (referral service)':<34}{c['per_second']:9.1f}{c['p50_ms']:9.2f}{c['p95_ms']:9.2f}"
        f"{c['p99_ms']:9.2f}{c['errors']:8d}{'':>8}",
        f"{'grpc.aio echo (gRPC ceiling)':<34}{e['per_second']:9.1f}{e['p50_ms']:9.2f}{e['p95_ms']:9.2f}"
        f"{e['p99_ms']:9.2f}{e['errors']:8d}{r['ratios']['create_vs_echo']:8.2f}",
        f"{'pgbench 1 insert/txn (commit ceil.)':<34}{pg['per_second']:9.1f}{pg['latency_avg_ms'] or 0:9.2f}"
        f"{'':>9}{'':>9}{0:8d}{r['ratios']['create_vs_pgbench']:8.2f}",
        "",
        f"Events ({ev['referrals']} referrals created and accepted at {ev['rate_per_second']:g}/s, "
        f"after {ev.get('started_after_drain_seconds', 0):g} s of draining the create phase's backlog"
        + (f"; {ev['waitlisted']} waitlisted: " + ", ".join(
            f"{n} {code}" for code, n in ev.get("waitlisted_reasons", {}).items()) if ev.get("waitlisted") else "")
        + ")",
        f"{'':<42}{'p50 ms':>9}{'p99 ms':>9}{'n':>5}",
    ]
    for key, label in (("create_to_scheduled", "CreateReferral -> ReferralScheduled"),
                       ("create_to_message", "CreateReferral -> patient's WeChat"),
                       ("scheduled_to_message", "ReferralScheduled -> patient's WeChat")):
        s = ev[key]
        rows.append(f"  {label:<40}{s['p50_ms'] or 0:9.1f}{s['p99_ms'] or 0:9.1f}{s['count']:5d}")
    rows += ["", *concurrency_rows(r), "", *cpu_rows(r)]
    rows += ["", "Peak memory (VmHWM): " + ", ".join(f"{k} {v:.0f} MiB" for k, v in r["peak_memory_mib"].items()),
             "", "Targets: " + "; ".join(f"{k}: {'met' if ok else 'MISSED'}" for k, ok in r["targets"].items())]
    return "\n".join(rows)


def concurrency_rows(r: dict) -> list[str]:
    """Latency below saturation, and what the p99 target asks of throughput at the fixed
    concurrency: by Little's law the mean latency of N closed-loop callers is N / throughput,
    and a p99 is never below the mean."""
    n, target = r["concurrency"], TARGETS["create_p99_ms"]
    rows = [f"CreateReferral by concurrent callers{'':<6}{'calls/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"]
    for callers, s in sorted(r.get("create_by_concurrency", {}).items(), key=lambda kv: int(kv[0])):
        label = f"{callers} caller" + ("" if callers == "1" else "s")
        rows.append(f"  {label:>12}{'':<28}{s['per_second']:9.1f}{s['p50_ms']:9.2f}{s['p95_ms']:9.2f}"
                    f"{s['p99_ms']:9.2f}")
    needed = n / (target / 1000)
    rows.append(f"p99 < {target:g} ms at {n} callers needs more than {needed:,.0f} creates/s "
                f"(mean latency = callers / throughput); this run: {r['create_referral']['per_second']:,.0f}/s.")
    return rows


def cpu_rows(r: dict) -> list[str]:
    """Who pays for a call, and the ceiling that sets: N cores give N CPU-seconds per second."""
    c, e = r["create_referral"]["cpu_ms_per_call"], r["echo_ceiling"]["cpu_ms_per_call"]
    if not c or not e:
        return []
    parts = ", ".join(f"{k} {v:.3f}" for k, v in c.items() if k != "total")
    cores = r["machine"]["cpus"] or 1
    return [f"CPU per call, ms: CreateReferral {c['total']:.3f} ({parts})",
            f"                  echo {e['total']:.3f} (" + ", ".join(
                f"{k} {v:.3f}" for k, v in e.items() if k != "total") + ")",
            f"A create costs the CPU of {c['total'] / e['total']:.1f} echo calls: on {cores} cores its CPU bound is "
            f"{1000 * cores / c['total']:.0f}/s, the echo's {1000 * cores / e['total']:.0f}/s.",
            *floor_rows(r, c, e, cores)]


def floor_rows(r: dict, c: dict, e: dict, cores: int) -> list[str]:
    """What the targets would ask of the referral service: the rest of a create's CPU as it
    is (the client, PostgreSQL writing the create's rows, NATS, notify handling its event)
    bounds the ratio and the throughput even if the service itself cost nothing."""
    rest = c["total"] - c.get("referral", 0.0)
    if rest <= 0:
        return []
    needed = r["concurrency"] / (TARGETS["create_p99_ms"] / 1000)
    return [f"Without the referral service's own CPU, the rest of a create costs {rest:.3f} ms "
            f"({rest / e['total']:.1f} echo calls): at most {e['total'] / rest:.2f} of the echo ceiling "
            f"(target {TARGETS['create_vs_echo']:g}) and {1000 * cores / rest:,.0f}/s at 100 % of {cores} cores "
            f"(the p99 target needs more than {needed:,.0f}/s)."]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per phase")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of CreateReferral before measuring")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--light", type=lambda v: [int(x) for x in v.split(",") if x], default=[1, 8],
                        help="also measure CreateReferral latency at these caller counts (comma-separated)")
    parser.add_argument("--light-duration", type=float, default=5.0, help="seconds per --light phase")
    parser.add_argument("--pg-clients", type=int, default=16)
    parser.add_argument("--event-rate", type=float, default=5.0, help="referrals per second in the event phase")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra service settings, e.g. --env DB_POOL_MAX=20 (repeatable)")
    parser.add_argument("--out", type=Path, default=config.repo_root() / "reports")
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args(argv)
    # The client runs on the services' event loop too: both ceilings and the system get the same client.
    result = app.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(table(result))
    print(f"\nwritten: {args.out / 'bench.json'}")


if __name__ == "__main__":
    main()
