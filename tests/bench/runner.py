"""A benchmark module run as the suite's smoke tests run it: a subprocess whose figures come back
on its ``BENCH_JSON`` line, and which cleans up after itself whatever happens.

A benchmark starts its own local cloud (in its own process group, ``shardq.local.cloud``) and
worker processes. Killed outright on a timeout, as ``subprocess.run(timeout=…)`` does, it would
leave them running for the rest of the suite (found under load: a cloud and two workers outlived
a failed e2e smoke run). So the run gets its own session, and a timeout interrupts it first
(SIGINT: its ``finally`` blocks and context managers stop the cloud and the workers), then kills
what is left of its group.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CLEANUP_S = 30.0  # what an interrupted benchmark gets to stop its cloud and workers
# ``python -m module`` with SIGINT raising KeyboardInterrupt whatever the parent's disposition: a
# shell's background job (CI's) starts with SIGINT ignored, an ignored signal survives exec, and the
# interpreter then installs no handler, so the interrupt would never reach the benchmark's
# ``finally``. A handled SIGINT is reset to its default in the benchmark's own children.
_INTERRUPTIBLE = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "del sys.argv[0]; runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"
)


def run_benchmark(
    module: str, *args: str, timeout: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run ``python -m module args`` (``_INTERRUPTIBLE``) from the repository root; assert it
    exited 0 and printed a ``BENCH_JSON`` line, and return that line's figures."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTIBLE, module, *args], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out, err = _interrupt(proc)
        raise AssertionError(f"{module} ran past {timeout:.0f} s\n{out[-2000:]}{err[-3000:]}") from None
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("BENCH_JSON ")]
    assert lines, out[-2000:]
    figures = json.loads(lines[-1].removeprefix("BENCH_JSON "))
    assert isinstance(figures, dict), lines[-1]
    return figures


def _interrupt(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGINT to the run's process group, then SIGKILL to what is left of it; its output (empty
    when something outside the group still holds its pipes after both)."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            return proc.communicate(timeout=CLEANUP_S)
        except subprocess.TimeoutExpired:
            continue
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    proc.wait()
    return "", ""
