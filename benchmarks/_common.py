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
