"""Cold-start proxy: import time and peak memory of each Lambda handler in a fresh interpreter.

Every measurement is a new ``python -c`` process that times its own import with
``time.perf_counter`` and reports ``ru_maxrss``; the floors (``import boto3`` alone, and
boto3 plus the Powertools objects every handler builds) are measured in the same run,
interleaved with the handlers, so the differences are comparable on a noisy machine.
One warm-up round runs first (discarded) so every ``.pyc`` exists before timing.

    .venv/bin/python -m benchmarks.import_time [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from benchmarks._common import ROOT, describe, emit_json, machine, median, table

HANDLERS = ("lambdas.splitter", "lambdas.aggregator", "lambdas.dlq_handler")
# What a handler may cost over ``import boto3`` (the target in the brief).
BUDGET_MS = 150.0

POWERTOOLS_FLOOR = """
import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor, EventType, SqsFifoPartialProcessor, process_partial_response,
)
Logger(service="bench"); Metrics(namespace="bench", service="bench"); Tracer(service="bench")
"""
# The same without constructing Tracer: Tracer() imports aws_xray_sdk.core, whose import builds a
# global recorder (two botocore X-Ray clients) even when POWERTOOLS_TRACE_DISABLED=true.
NO_TRACER_FLOOR = POWERTOOLS_FLOOR.replace('; Tracer(service="bench")', "")
assert NO_TRACER_FLOOR != POWERTOOLS_FLOOR

# name -> statement timed inside the fresh interpreter
TARGETS: dict[str, str] = {
    "python (nothing)": "pass",
    "boto3": "import boto3",
    "boto3 + powertools": POWERTOOLS_FLOOR,
    "boto3 + powertools, no Tracer()": NO_TRACER_FLOOR,
    **{h: f"import {h}" for h in HANDLERS},
}

PROBE = """
import json, re, resource, time
_t0 = time.perf_counter()
exec(compile({stmt!r}, "<bench>", "exec"))
_dt = time.perf_counter() - _t0
_hwm = re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())
print(json.dumps({{
    "s": _dt,
    "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "vmhwm_kb": int(_hwm.group(1)) if _hwm else None,
}}))
"""
# Linux keeps ru_maxrss across fork and exec, so a child spawned straight from this (large)
# process would report this process's peak. /bin/sh forks the interpreter instead (the
# trailing ":" stops it from exec-ing in place), so the probe's ru_maxrss is its own.
SPAWN = ["/bin/sh", "-c", '"$0" "$@"; :']


def child_env() -> dict[str, str]:
    """The subprocess environment: tracing off, a region, and .pyc caches allowed."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # the Makefile exports it; Lambda has its .pyc in the zip or not
    env.pop("PYTHONPATH", None)
    env["POWERTOOLS_TRACE_DISABLED"] = "true"
    env["AWS_DEFAULT_REGION"] = "us-east-1"
    return env


def measure_once(stmt: str, env: dict[str, str]) -> dict[str, float]:
    """One fresh interpreter: seconds spent in ``stmt`` and peak RSS in KiB."""
    out = subprocess.run(
        [*SPAWN, sys.executable, "-c", PROBE.format(stmt=stmt)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def importtime_modules(stmt: str, env: dict[str, str]) -> dict[str, int]:
    """``-X importtime`` self time (µs) per module imported by ``stmt``."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", stmt],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    mods: dict[str, int] = {}
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        self_us, _cum, name = (p.strip() for p in line[len("import time:") :].split("|"))
        mods[name.strip()] = mods.get(name.strip(), 0) + int(self_us)
    return mods


def extra_over_floor(env: dict[str, str], top: int = 5) -> dict[str, dict[str, Any]]:
    """Per handler: modules it imports that the Powertools floor does not, and their self time."""
    floor = importtime_modules(POWERTOOLS_FLOOR, env)
    out: dict[str, dict[str, Any]] = {}
    for h in HANDLERS:
        mods = importtime_modules(f"import {h}", env)
        extra = {m: us for m, us in mods.items() if m not in floor}
        ranked = sorted(extra.items(), key=lambda kv: -kv[1])
        out[h] = {
            "modules": len(extra),
            "self_ms": round(sum(extra.values()) / 1000, 1),
            "top": [[m, round(us / 1000, 1)] for m, us in ranked[:top]],
        }
    return out


def asset() -> dict[str, int]:
    """The Lambda asset: zipped bytes, unzipped bytes, file count."""
    from shardq.local.functions import asset_files, asset_zip

    files = asset_files()
    return {
        "zipped_bytes": len(asset_zip()),
        "unzipped_bytes": sum(f.stat().st_size for f in files),
        "files": len(files),
    }


def run(runs: int) -> dict[str, Any]:
    env = child_env()
    for stmt in TARGETS.values():  # warm-up: compiles every .pyc the imports need; discarded
        measure_once(stmt, env)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in TARGETS}
    for i in range(runs):
        names = list(TARGETS)
        if i % 2:  # alternate the order so drift does not favour one target
            names.reverse()
        for name in names:
            samples[name].append(measure_once(TARGETS[name], env))
    result: dict[str, Any] = {"runs": runs, "warmup_runs": 1, "budget_ms_over_boto3": BUDGET_MS}
    rows: dict[str, dict[str, float]] = {}
    for name, got in samples.items():
        ms = [s["s"] * 1000 for s in got]
        rows[name] = {
            "median_ms": round(median(ms), 1),
            "min_ms": round(min(ms), 1),
            "max_ms": round(max(ms), 1),
            "maxrss_mib": round(median([s["maxrss_kb"] for s in got]) / 1024, 1),
            "vmhwm_mib": round(median([s["vmhwm_kb"] or 0 for s in got]) / 1024, 1),
        }
    boto = rows["boto3"]["median_ms"]
    floor = rows["boto3 + powertools"]["median_ms"]
    for row in rows.values():
        row["over_boto3_ms"] = round(row["median_ms"] - boto, 1)
        row["over_powertools_floor_ms"] = round(row["median_ms"] - floor, 1)
    result["targets"] = rows
    result["handlers_within_budget"] = all(rows[h]["over_boto3_ms"] <= BUDGET_MS for h in HANDLERS)
    result["extra_modules_over_floor"] = extra_over_floor(env)
    result["asset"] = asset()
    return result


def report(result: dict[str, Any]) -> None:
    rows = []
    for name, r in result["targets"].items():
        verdict = ""
        if name in HANDLERS:
            verdict = "ok" if r["over_boto3_ms"] <= BUDGET_MS else "OVER"
        rows.append(
            [
                name,
                f"{r['median_ms']:.1f}",
                f"{r['min_ms']:.1f}",
                f"{r['over_boto3_ms']:+.1f}",
                f"{r['over_powertools_floor_ms']:+.1f}",
                f"{r['maxrss_mib']:.1f}",
                verdict,
            ]
        )
    print(
        f"Import time in a fresh interpreter: median of {result['runs']} runs "
        f"(after {result['warmup_runs']} warm-up run; .pyc caches on)"
    )
    print(
        table(
            [
                "target",
                "median ms",
                "min ms",
                "vs boto3 ms",
                "vs boto3+powertools ms",
                "peak RSS MiB",
                f"≤ boto3+{BUDGET_MS:.0f} ms",
            ],
            rows,
        )
    )
    print()
    print("Modules a handler imports beyond boto3 + Powertools (one -X importtime run, self time):")
    extra_rows = [
        [h, e["modules"], f"{e['self_ms']:.1f}", ", ".join(f"{m} {ms}" for m, ms in e["top"][:3])]
        for h, e in result["extra_modules_over_floor"].items()
    ]
    print(table(["handler", "modules", "self ms", "largest (ms)"], extra_rows))
    print()
    a = result["asset"]
    print(
        table(
            ["Lambda asset", "value"],
            [
                ["zipped bytes", a["zipped_bytes"]],
                ["unzipped bytes", a["unzipped_bytes"]],
                ["files", a["files"]],
            ],
        )
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per target (default 15)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    result = {**run(args.runs), "machine": machine()}
    print(describe(result["machine"]))
    report(result)
    emit_json("import_time", result)
    return result


if __name__ == "__main__":
    main()
