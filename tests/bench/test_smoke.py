"""Every benchmark runs at a tiny size in the normal suite, so none of them rots.

Figures are not asserted here (targets are for BENCHMARKS.md); a benchmark exits non-zero
when a correctness check inside it fails (lost or duplicated tasks), and that is asserted.
"""

from __future__ import annotations

import pytest

from tests.bench.runner import run_benchmark

SMOKE = {
    "import_time": ["--runs", "1", "--no-warmup"],
    "fanout": ["--tasks", "100", "--repeats", "1"],
    "quota": ["--tasks", "300", "--ht-tasks", "600", "--naive-tasks", "20", "--sweep", ""],
    "aggregation": ["--results", "60"],
    "e2e": ["--shards", "8", "--workers", "2"],
    "idle": ["--seconds", "3", "--baseline-seconds", "1"],
    "preempt": ["--workers", "2", "--tasks", "4", "--task-seconds", "2", "--step-seconds", "0.25",
                "--checkpoint-every", "0.5", "--interrupt-every", "1.5", "--interruptions", "4",
                "--lease", "3", "--grace", "3", "--timeout", "120"],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_benchmark_runs_and_reports(name: str) -> None:
    # A smoke run's figures are not asserted; it exits 0 and prints its BENCH_JSON line.
    run_benchmark(f"benchmarks.{name}", *SMOKE[name], timeout=300)
