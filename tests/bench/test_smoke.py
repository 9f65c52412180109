"""Every benchmark runs at a tiny size in the normal suite, so none of them rots.

Figures are not asserted here (targets are for BENCHMARKS.md); a benchmark exits non-zero
when a correctness check inside it fails (lost or duplicated tasks), and that is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

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
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *SMOKE[name]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_JSON ")]
    assert lines, proc.stdout[-2000:]
    assert isinstance(json.loads(lines[-1].removeprefix("BENCH_JSON ")), dict)
