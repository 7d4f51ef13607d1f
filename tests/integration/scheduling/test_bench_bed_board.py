"""The bed board benchmark (benchmarks/scheduler/bedboard.py) on a tiny hospital, so it
cannot rot; its figures are read by people, never asserted."""
import asyncpg

from benchmarks.scheduler.bedboard import SCHEMA, BedBoardConfig, measure


async def test_the_bed_board_benchmark_blocks_a_bed_both_ways_and_leaves_nothing_behind(stack):
    lines: list[str] = []
    cfg = BedBoardConfig(sizes=(2,), departments=(1,), spare_beds=1, repeats=1, time_limit=1.0)
    [row] = await measure(stack.database_url, cfg, echo=lines.append)
    assert row["admissions_on_bed"] == 2 and row["outpatient_slots"] > 0
    assert (row["joint"]["engine_runs"], row["one_by_one"]["engine_runs"]) == (1, 2)
    # Each way ran on the same board (the other's run rolled back): both move the two.
    assert [(row[w]["moved"], row[w]["cancelled"]) for w in ("joint", "one_by_one")] == [(2, 0), (2, 0)]
    assert any("Bed board" in line for line in lines)
    conn = await asyncpg.connect(stack.database_url)
    try:
        assert not await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", SCHEMA)
    finally:
        await conn.close()
