"""The two scheduler benchmarks: consortium days (CP-SAT vs greedy, growth) and PAS."""

from __future__ import annotations


import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from services.scheduling.engine import SolverParams, parse_pas, solve, solve_greedy, solve_pas, solve_pas_greedy
from services.scheduling.engine.pas import WEIGHTS

from .generator import CITY, COUNTY, ConsortiumSpec, generate_consortium
from .metrics import measure

# shared/ lies beside the repository, on a developer's machine and in CI alike.
DEFAULT_PAS_DIR = Path(__file__).resolve().parents[3] / "shared" / "bench" / "pas"


@dataclass(frozen=True)
class BenchConfig:
    consortia: tuple[tuple[ConsortiumSpec, int], ...]  # (spec, referrals in the week)
    time_limit: float  # CP-SAT seconds per hospital problem
    growth: bool
    growth_sizes: tuple[tuple[int, float], ...]  # (referrals, CP-SAT seconds)
    pas: bool
    pas_time_limit: float
    pas_dir: str = str(DEFAULT_PAS_DIR)
    pas_instances: tuple[str, ...] | None = None
    workers: int = 2
    seed: int = 20240601
    batch_size: int = 2000
    max_options: int = 60

    @staticmethod
    def full() -> BenchConfig:
        return BenchConfig(
            consortia=((COUNTY, 600), (CITY, 2000)),
            time_limit=30.0,
            growth=True,
            growth_sizes=((100, 10.0), (1000, 45.0), (10000, 150.0)),
            pas=True,
            pas_time_limit=30.0,
        )

    @staticmethod
    def quick() -> BenchConfig:
        return BenchConfig(
            consortia=((COUNTY, 60), (CITY, 120)),
            time_limit=3.0,
            growth=True,
            growth_sizes=((50, 2.0), (200, 4.0)),
            pas=True,
            pas_time_limit=5.0,
            pas_instances=("testdata01",),
        )

    def with_overrides(self, **kw) -> BenchConfig:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def params(self, time_limit: float) -> SolverParams:
        # The default, deterministic mode: a work budget (CP-SAT deterministic units,
        # about half a unit per second here) spent on the whole model, then a seeded LNS;
        # the same seed gives the same figures on any machine.
        return SolverParams(
            time_limit_seconds=time_limit,
            num_workers=self.workers,
            random_seed=self.seed,
            max_options_per_item=self.max_options,
            batch_size=self.batch_size,
        )


ROWS = (
    ("placed share", "placed_share", "{:.1%}"),
    ("urgent+emergency within deadline", "urgent_within_deadline_share", "{:.1%}"),
    ("wait mean emergency (days)", "wait_mean_emergency", "{:.2f}"),
    ("wait p90 emergency", "wait_p90_emergency", "{:.0f}"),
    ("wait mean urgent", "wait_mean_urgent", "{:.2f}"),
    ("wait p90 urgent", "wait_p90_urgent", "{:.0f}"),
    ("wait mean routine", "wait_mean_routine", "{:.2f}"),
    ("wait p90 routine", "wait_p90_routine", "{:.0f}"),
    ("trips per placed patient", "trips_per_patient", "{:.2f}"),
    ("reserved places (slot places+exam slots+bed-nights)", "reserved_places", "{:.0f}"),
    ("reserved used", "reserved_used", "{:.0f}"),
    ("reserved unused (released to general pool)", "reserved_unused", "{:.0f}"),
    ("overflow places used (green channel)", "overflow_used", "{:.0f}"),
    ("worst clinic fulfilment vs quota", "worst_clinic_fulfilment", "{:.1%}"),
    ("objective (engine cost units)", "objective", "{:.0f}"),
    ("solve time (s)", "solve_seconds", "{:.1f}"),
)


def _table(title: str, cols: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [cols] + rows) for i in range(len(cols))]
    line = lambda r: "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([f"\n== {title}", line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows])


def consortium_day(cfg: BenchConfig, echo: Callable[[str], None]) -> list[dict]:
    out = []
    for spec, n in cfg.consortia:
        problems = generate_consortium(spec, n, cfg.seed)
        greedy = [solve_greedy(p) for p in problems]
        cpsat = [solve(p, cfg.params(cfg.time_limit)) for p in problems]
        g, c = measure(problems, greedy), measure(problems, cpsat)
        status = ", ".join(f"{s.status.value}" + (f" bound {s.bound:.0f}" if s.bound is not None else "") for s in cpsat)
        title = (
            f"Consortium week: {spec.name}, {n} referrals accepted over 7 days, horizon 21 days, "
            f"{len(problems)} hospital problem(s); CP-SAT {cfg.time_limit:.0f} s/hospital, {cfg.workers} workers, seed {cfg.seed} [{status}]"
        )
        echo(_table(title, ["figure", "CP-SAT", "greedy (FCFS desk)"], [[label, fmt.format(c[key]), fmt.format(g[key])] for label, key, fmt in ROWS]))
        echo("   objective terms CP-SAT: " + _terms(cpsat) + "\n   objective terms greedy: " + _terms(greedy))
        out.append({"consortium": spec.name, "referrals": n, "time_limit": cfg.time_limit, "cpsat": c, "greedy": g, "cpsat_status": status})
    return out


def _terms(solutions: list) -> str:
    total: dict[str, int] = {}
    for s in solutions:
        for k, v in s.terms.items():
            total[k] = total.get(k, 0) + v
    return ", ".join(f"{k} {v}" for k, v in total.items() if v)


def growth(cfg: BenchConfig, echo: Callable[[str], None]) -> list[dict]:
    rows = []
    out = []
    for n, limit in cfg.growth_sizes:
        [p] = generate_consortium(COUNTY, n, cfg.seed + n)
        t0 = time.perf_counter()
        g = solve_greedy(p)
        tg = time.perf_counter() - t0
        c = solve(p, cfg.params(limit))
        mg, mc = measure([p], [g]), measure([p], [c])
        gap = f"{(c.objective - c.bound) / c.objective:.1%}" if c.bound is not None and c.objective else "n/a (batched)"
        rows.append([f"{n:,}", f"{limit:.0f}", f"{c.solve_seconds:.1f}", c.status.value, gap, f"{mc['placed_share']:.1%}", f"{mg['placed_share']:.1%}", f"{c.objective:,}", f"{g.objective:,}", f"{tg:.1f}"])
        out.append({"referrals": n, "time_limit": limit, "cpsat_seconds": c.solve_seconds, "status": c.status.value, "bound": c.bound, "cpsat": mc, "greedy": mg, "greedy_seconds": tg, "notes": list(c.notes)})
    echo(_table(
        f"Solve-time growth (county generator, 1 hospital; options per item <= {cfg.max_options}, batches of {cfg.batch_size})",
        ["referrals", "limit s", "CP-SAT s", "status", "gap to bound", "placed CP-SAT", "placed greedy", "cost CP-SAT", "cost greedy", "greedy s"],
        rows,
    ))
    return out


def pas(cfg: BenchConfig, echo: Callable[[str], None]) -> list[dict]:
    files = sorted(Path(cfg.pas_dir).glob("testdata*.txt"))
    if cfg.pas_instances:
        files = [f for f in files if f.stem in cfg.pas_instances]
    rows = []
    out = []
    for f in files:
        inst = parse_pas(f.read_text(), f.stem)
        g = solve_pas_greedy(inst)
        c = solve_pas(inst, cfg.pas_time_limit, cfg.workers, cfg.seed, hint=g)
        gap = f"{c.gap:.1%}" if c.gap is not None else "n/a"
        rows.append([f.stem, str(len(inst.patients)), str(len(inst.beds)), f"{c.cost:.1f}", f"{c.bound:.1f}" if c.bound is not None else "n/a", gap, c.status, f"{g.cost:.1f}", f"{c.seconds:.1f}"])
        out.append({"instance": f.stem, "patients": len(inst.patients), "beds": len(inst.beds), "cpsat_cost": c.cost, "bound": c.bound, "gap": c.gap, "status": c.status, "greedy_cost": g.cost, "cpsat_terms": c.terms, "greedy_terms": g.terms, "seconds": c.seconds, "time_limit": cfg.pas_time_limit})
    echo(_table(
        f"Patient Admission Scheduling (Demeester et al. 2010), CP-SAT {cfg.pas_time_limit:.0f} s/instance, {cfg.workers} workers",
        ["instance", "patients", "beds", "CP-SAT cost", "lower bound*", "gap", "status", "greedy cost", "CP-SAT s"],
        rows,
    ))
    echo(
        "   weights per patient-night: " + ", ".join(f"{k} {v}" for k, v in WEIGHTS.items())
        + " (transfer per bed change).\n   gender: M/F room each patient-night of the other gender; D room the minority per night."
        "\n   room_capacity: per distinct capacity category above the preference; specialism: per priority step, missing = worst listed priority."
        "\n   CP-SAT cost: whole room-per-patient model (greedy hint) for 70 % of the time, then a seeded LNS for the rest"
        "\n   (frees the patients of a random night range or department, re-solves them with the others fixed, keeps only"
        "\n   improvements; from the greedy rooms if the whole model found nothing); beds inside each room by arrival,"
        "\n   scored with the weights above."
        "\n   * bound proven by CP-SAT (whole model, first 70 % of the time) over schedules that keep each patient in one room (no transfers)."
    )
    return out


def run_all(cfg: BenchConfig, echo: Callable[[str], None] = print) -> dict:
    started = time.perf_counter()
    report: dict = {"config": {k: str(v) for k, v in cfg.__dict__.items()}}
    report["consortium_week"] = consortium_day(cfg, echo)
    if cfg.growth:
        report["growth"] = growth(cfg, echo)
    if cfg.pas:
        report["pas"] = pas(cfg, echo)
    report["total_seconds"] = time.perf_counter() - started
    echo(f"\ntotal {report['total_seconds']:.0f} s")
    return report
