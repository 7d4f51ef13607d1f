"""The demo and the load benchmark run end to end at a tiny size, so neither can rot."""
from __future__ import annotations

import argparse

from benchmarks.demo.__main__ import run as run_demo
from benchmarks.demo.day import DayOptions
from benchmarks.load.__main__ import run as run_bench
from benchmarks.load.__main__ import table


async def test_a_tiny_demo_day_writes_its_reports(tmp_path):
    text = await run_demo(DayOptions(referrals=12, concurrency=4, settle_seconds=15), tmp_path / "data",
                          tmp_path / "out", quiet=True)
    assert "Referrals 转诊" in text and "Reserved capacity" in text and "Notifications" in text
    page = (tmp_path / "out" / "demo.html").read_text(encoding="utf-8")
    assert page.count("<svg") == 3 and "<script" not in page and "http" not in page.split("</style>")[0]


async def test_a_two_second_bench_fills_every_column(tmp_path):
    args = argparse.Namespace(duration=2.0, warmup=0.0, concurrency=8, pg_clients=2, event_rate=2.0, seed=3,
                              light=[1], light_duration=1.0, env=[], out=tmp_path, data_dir=tmp_path / "data")
    result = await run_bench(args)
    assert result["create_referral"]["calls"] > 0 and result["echo_ceiling"]["calls"] > 0
    assert result["pgbench_ceiling"]["per_second"] > 0
    assert result["events"]["create_to_message"]["count"] > 0
    assert sum(result["events"]["waitlisted_reasons"].values()) == result["events"]["waitlisted"]
    assert set(result["peak_memory_mib"]) == {"referral", "scheduling", "notify"}
    # Every part of the system is charged for the creates, and the services not as the client.
    create_cpu = result["create_referral"]["cpu_ms_per_call"]
    assert set(create_cpu) == {"referral", "scheduling", "notify", "postgres", "nats", "benchmark process", "total"}
    assert create_cpu["referral"] > 0 and create_cpu["postgres"] > 0
    assert create_cpu["benchmark process"] < create_cpu["total"] - create_cpu["referral"]
    assert set(result["echo_ceiling"]["cpu_ms_per_call"]) == {"echo server", "benchmark process", "total"}
    assert set(result["create_by_concurrency"]) == {"1", "8"}
    assert result["create_by_concurrency"]["1"]["calls"] > 0
    text = table(result)
    assert "CreateReferral" in text and "echo calls" in text and "needs more than 160 creates/s" in text
    rest = create_cpu["total"] - create_cpu["referral"]
    assert f"Without the referral service's own CPU, the rest of a create costs {rest:.3f} ms" in text
