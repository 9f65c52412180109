"""Start and stop ``shardq worker`` processes against a stack, as a fleet would run them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def start_workers(
    env: Mapping[str, str],
    count: int,
    *,
    log_dir: Path,
    stack: str = "shardq",
    name: str = "worker",
    allow: str = "examples.*",
    extra_args: Sequence[str] = (),
) -> list[subprocess.Popen[bytes]]:
    """``count`` worker processes finding the stack by its outputs; logs in ``log_dir/<name>-<i>.log``.

    ``allow`` is their ``--allow`` (docs/SECURITY.md): by default the repository's examples only.
    """
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    procs = []
    for i in range(count):
        with (log_dir / f"{name}-{i}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "shardq.cli", "--stack", stack, "worker",
                     "--worker-id", f"{name}-{i}", "--allow", allow, *extra_args],
                    cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
    return procs


def stop_workers(procs: Sequence[subprocess.Popen[bytes]], timeout: float = 30.0) -> list[int]:
    """SIGTERM every worker (they release running tasks and exit 0); returns their exit codes."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes
