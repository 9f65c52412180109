"""The smoke runs' runner leaves nothing behind when a benchmark runs past its timeout."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.bench.runner import run_benchmark


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z"


def test_a_benchmark_past_its_timeout_is_interrupted_and_stops_what_it_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    with pytest.raises(AssertionError, match="ran past"):
        run_benchmark("tests.bench.sleeper", str(pid_file), timeout=10)  # its pid is written by then
    child = int(pid_file.read_text())
    # Killed outright (what ``subprocess.run(timeout=…)`` does), the benchmark could not stop its
    # own-session child: it would sleep on for two minutes.
    end = time.monotonic() + 10
    while _alive(child) and time.monotonic() < end:
        time.sleep(0.1)
    assert not _alive(child)
