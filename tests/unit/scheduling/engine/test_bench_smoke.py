"""The benchmark's generator, metrics and both solvers on a tiny instance, so they cannot rot."""

from __future__ import annotations

from benchmarks.scheduler.generator import CITY, COUNTY, generate_consortium
from benchmarks.scheduler.metrics import measure
from benchmarks.scheduler.runner import BenchConfig, run_all
from scheduling_engine_support import check_valid

from services.scheduling.engine import SolverParams, solve, solve_greedy


def test_generator_is_deterministic_for_a_seed():
    assert generate_consortium(COUNTY, 40, seed=3) == generate_consortium(COUNTY, 40, seed=3)
    assert generate_consortium(COUNTY, 40, seed=3) != generate_consortium(COUNTY, 40, seed=4)
    city = generate_consortium(CITY, 80, seed=3)
    assert len(city) == 4
    km = {r.clinic_distance_km for p in generate_consortium(COUNTY, 200, seed=3) for r in p.referrals}
    assert 20 <= min(km) and max(km) <= 170


def test_both_solvers_on_a_tiny_consortium():
    [p] = generate_consortium(COUNTY, 30, seed=5)
    c = solve(p, SolverParams(time_limit_seconds=3))
    g = solve_greedy(p)
    check_valid(p, c)
    check_valid(p, g)
    assert c.objective <= g.objective
    figures = measure([p], [c])
    assert 0.0 <= figures["placed_share"] <= 1.0 and figures["referrals"] == 30


def test_runner_end_to_end_without_pas():
    cfg = BenchConfig.quick().with_overrides(consortia=((COUNTY, 20),), growth_sizes=((20, 1.0),), pas=False, time_limit=1.0)
    lines: list[str] = []
    report = run_all(cfg, echo=lines.append)
    assert report["consortium_week"][0]["cpsat"]["referrals"] == 20
    assert any("CP-SAT" in ln for ln in lines)
