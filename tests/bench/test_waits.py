"""The benchmarks' waits on worker start-up fail with the reason: the workers' state and log tails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks._common import wait_for_workers


def spawn(log: Path, code: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT)


def test_a_worker_that_exits_fails_the_wait_at_once_with_its_log(tmp_path: Path) -> None:
    # GIVEN one worker that starts and one that dies on start-up
    logs = [tmp_path / "worker-0.log", tmp_path / "worker-1.log"]
    procs = [
        spawn(logs[0], "print('worker started', flush=True); import time; time.sleep(30)"),
        spawn(
            logs[1], "print('ModuleNotFoundError: no module named train', flush=True); raise SystemExit(3)"
        ),
    ]
    try:
        procs[1].wait(timeout=60)
        # WHEN the benchmark waits for them, with a bound far beyond the test's run
        with pytest.raises(RuntimeError) as caught:
            wait_for_workers(procs, logs, timeout=600)
        # THEN it fails naming the dead worker, its exit code and its log's last lines
        message = str(caught.value)
        assert "1 of 2 workers exited before starting" in message
        assert "worker 1 (exit code 3)" in message and "no module named train" in message
        assert "worker 0" not in message
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_a_worker_still_starting_at_the_bound_is_named_with_the_load(tmp_path: Path) -> None:
    # GIVEN a worker that runs but never says it started
    log = tmp_path / "worker-0.log"
    proc = spawn(log, "print('importing torch...', flush=True); import time; time.sleep(30)")
    try:
        # WHEN the bound ends the wait
        with pytest.raises(RuntimeError) as caught:
            wait_for_workers([proc], [log], timeout=0)
        # THEN the message says it is still running, shows its log and the machine's load
        message = str(caught.value)
        assert "did not start within 0 s (load average" in message
        assert "worker 0 (running)" in message
    finally:
        proc.kill()
        proc.wait()


def test_started_workers_pass(tmp_path: Path) -> None:
    log = tmp_path / "worker-0.log"
    proc = spawn(log, "print('worker started', flush=True)")
    proc.wait(timeout=60)
    assert wait_for_workers([proc], [log], timeout=600) >= 0
