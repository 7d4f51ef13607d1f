"""`make demo`: a day of a county consortium, with a report.

Starts PostgreSQL, NATS, the three services and the vendor fakes in a fresh data
folder, loads the DEMO consortium, simulates the day (seeded) and writes
reports/demo.txt and reports/demo.html.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from services.common import config

from .day import Day, DayOptions
from .report import html_report, text_report
from .system import System

# The day's clocks: releases and re-optimisation run every few seconds, not every minute,
# because the simulated day lasts minutes.
DEMO_ENV = {"SCHEDULING_RELEASE_POLL_SECONDS": "3", "SCHEDULING_REOPTIMISE_SECONDS": "5",
            "SCHEDULER_TIME_LIMIT_SECONDS": "1", "OUTBOX_POLL_SECONDS": "0.5", "LOG_LEVEL": "WARNING",
            "NOTIFY_SMS_PER_HOUR": "20", "NOTIFY_SMS_MIN_SPACING_SECONDS": "0"}


async def run(opts: DayOptions, data_dir: Path, out_dir: Path, quiet: bool = False) -> str:
    started = time.monotonic()
    print("starting PostgreSQL, NATS, the three services and the vendor fakes ...", file=sys.stderr, flush=True)
    async with System(data_dir, DEMO_ENV) as system:
        await system.load_demo()
        # Calls of the day: beds, the burst, triage, follow-ups; the bar grows as they land.
        with tqdm(total=int(opts.referrals * 4.2), unit="call", desc="consortium day", disable=quiet, mininterval=1.0,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            result = await Day(system, opts, bar).run()
    text = text_report(result, time.monotonic() - started)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "demo.txt").write_text(text + "\n", encoding="utf-8")
    (out_dir / "demo.html").write_text(html_report(result, text), encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--referrals", type=int, default=DayOptions.referrals, help="up-referrals in the morning burst")
    parser.add_argument("--seed", type=int, default=DayOptions.seed)
    parser.add_argument("--concurrency", type=int, default=DayOptions.concurrency, help="callers at once")
    parser.add_argument("--out", type=Path, default=config.repo_root() / "reports")
    parser.add_argument("--data-dir", type=Path, help="keep the day's database here (default: a temp folder)")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="consortium-demo-"))
    try:
        text = asyncio.run(run(DayOptions(referrals=args.referrals, seed=args.seed, concurrency=args.concurrency),
                               data_dir, args.out))
    finally:
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(text)
    print(f"\nwritten: {args.out / 'demo.txt'}, {args.out / 'demo.html'}")


if __name__ == "__main__":
    main()
