"""Small shared helpers: medians, a plain-text table and the JSON result line."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence."""
    return float(statistics.median(values))


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git() -> dict[str, Any]:
    """The commit measured, and whether the working tree differed from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": head, "dirty": bool(dirty)}


def machine() -> dict[str, Any]:
    """Where the figures came from: interpreter, cores, package versions, commit."""
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "versions": {d: _version(d) for d in ("ministack", "boto3", "aws-lambda-powertools", "aws-xray-sdk")},
        **_git(),
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (readable in a terminal, pasteable into BENCHMARKS.md)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
            + " |"
        )

    sep = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def emit_json(name: str, result: dict[str, Any]) -> None:
    """One machine-readable line, prefixed so it can be grepped out of the output."""
    print("BENCH_JSON " + json.dumps({"benchmark": name, **result}, sort_keys=True))
    sys.stdout.flush()


def describe(m: dict[str, Any]) -> str:
    """One line naming the machine and the versions, printed above each table."""
    v = ", ".join(f"{k} {val}" for k, val in m["versions"].items() if val)
    state = f"commit {m['commit']}{' + local changes' if m['dirty'] else ''}" if m.get("commit") else ""
    return f"machine: {m['cpus']} cores, Python {m['python']}; {v}; {state}".rstrip("; ")


# Start-up bound for worker processes: a worker imports boto3 and its training module, makes
# clients and reads queue attributes — ≈ 2 s idle, but 20+ s each when several start at once
# on two cores busy with the local cloud and other test runs. The bound only ends a hung run.
WORKER_START_TIMEOUT_S = 300.0


def load() -> str:
    """The machine's load averages (1, 5, 15 min) and core count, for a failure message."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return f"{os.cpu_count()} cores"
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} cores"


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file, indented, for a failure message."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"    ({path}: {exc.strerror or exc})"
    tail = text.splitlines()[-lines:] or ["(empty)"]
    return "\n".join(f"    {line}" for line in tail)


def wait_for_workers(procs: Sequence[subprocess.Popen[bytes]], logs: Sequence[Path], timeout: float) -> float:
    """Wait until every worker process logged ``worker started``; the seconds it took.

    Fails at once when a worker exits, and after ``timeout`` seconds otherwise, naming each worker
    that is not up with its state and its log's tail, and the machine's load.
    """
    import time

    t0 = time.monotonic()
    while True:
        started = ["worker started" in p.read_text(errors="replace") if p.exists() else False for p in logs]
        if all(started):
            return time.monotonic() - t0
        exited = [i for i, proc in enumerate(procs) if proc.poll() is not None and not started[i]]
        late = time.monotonic() - t0 > timeout
        if exited or late:
            why = "exited before starting" if exited else f"did not start within {timeout:.0f} s ({load()})"
            shown = exited or [i for i, ok in enumerate(started) if not ok]
            states = {
                i: "running" if procs[i].poll() is None else f"exit code {procs[i].returncode}" for i in shown
            }
            parts = [f"worker {i} ({states[i]}), {logs[i]}:\n{log_tail(logs[i])}" for i in shown]
            raise RuntimeError(f"{len(shown)} of {len(procs)} workers {why}:\n" + "\n".join(parts))
        time.sleep(0.2)
