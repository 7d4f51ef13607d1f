"""``python -m benchmarks.scheduler [--quick] [--time-limit S] [--pas-time-limit S]
[--pas-instance testdata01 ...] [--skip-growth] [--skip-pas] [--skip-bedboard]``

Figures, not tests: prints the tables and writes ``reports/bench-scheduler.json``. The
bed board figures need PostgreSQL (``bedboard.py``); the engine's do not.
"""

from __future__ import annotations


import argparse
import asyncio
import json
import os
from pathlib import Path

from .bedboard import BedBoardConfig
from .bedboard import run as run_bedboard
from .runner import DEFAULT_PAS_DIR, BenchConfig, run_all


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scheduler")
    ap.add_argument("--quick", action="store_true", help="small instances and short limits (smoke run)")
    ap.add_argument("--time-limit", type=float, default=None, help="CP-SAT seconds per consortium-day hospital")
    ap.add_argument("--pas-time-limit", type=float, default=None, help="CP-SAT seconds per PAS instance")
    ap.add_argument("--pas-dir", default=os.environ.get("PAS_DIR", str(DEFAULT_PAS_DIR)))
    ap.add_argument("--pas-instance", action="append", default=None, help="instance stem, e.g. testdata01 (repeatable)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--skip-growth", action="store_true")
    ap.add_argument("--skip-pas", action="store_true")
    ap.add_argument("--skip-bedboard", action="store_true", help="leave out the bed board call (needs PostgreSQL)")
    ap.add_argument("--out", default="reports/bench-scheduler.json")
    args = ap.parse_args(argv)
    cfg = BenchConfig.quick() if args.quick else BenchConfig.full()
    cfg = cfg.with_overrides(
        time_limit=args.time_limit,
        pas_time_limit=args.pas_time_limit,
        pas_dir=args.pas_dir,
        pas_instances=tuple(args.pas_instance) if args.pas_instance else None,
        workers=args.workers,
        seed=args.seed,
        growth=not args.skip_growth,
        pas=not args.skip_pas,
    )
    report = run_all(cfg, echo=print)
    if not args.skip_bedboard:
        board = BedBoardConfig.quick() if args.quick else BedBoardConfig.full()
        report["bed_board"] = asyncio.run(run_bedboard(board, echo=print))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
