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
    """The Lambda asset the stack packages (``stacks.components.lambda_asset``): zipped, unzipped, files."""
    import importlib.util
    import io
    import zipfile

    # Load the module by path: importing the ``stacks`` package would import the CDK.
    spec = importlib.util.spec_from_file_location("_lambda_asset", ROOT / "stacks/components/lambda_asset.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    files = [ROOT / f for f in module.asset_files(ROOT)]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f.relative_to(ROOT).as_posix())
    return {
        "zipped_bytes": len(buf.getvalue()),
        "unzipped_bytes": sum(f.stat().st_size for f in files),
        "files": len(files),
    }


INVOKE_PROBE = """
import json, re, resource, sys, time
from tests.helpers import LambdaContext
_t0 = time.perf_counter()
import {module} as _h
_import_s = time.perf_counter() - _t0
_after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
_event = json.loads(sys.stdin.read())
_t1 = time.perf_counter()
_answer = _h.handler(_event, LambdaContext(function_name="bench"))
_invoke_s = time.perf_counter() - _t1
print(json.dumps({{
    "import_s": _import_s,
    "invoke_s": _invoke_s,
    "maxrss_after_import_kb": _after_import,
    "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "answer": _answer,
}}))
"""


def invocation_memory(shards: int = 100) -> dict[str, dict[str, Any]]:
    """Peak RSS of one cold invocation of each (decorated) handler against a local cloud.

    Events: the splitter gets a request for ``shards`` shards; the aggregator a batch of
    ``shards`` results of a submitted job (the stack's batch size is 100); the DLQ handler
    10 dead tasks of that job (the FIFO source's batch). Each child imports its handler,
    notes ``ru_maxrss``, invokes once and notes it again.
    """
    from benchmarks.fanout import request
    from shardq.core.engine import Engine
    from shardq.local.cloud import LocalCloud
    from shardq.local.resources import dlq_urls, provision
    from tests.helpers import body_event, receive_all, result_for, sqs_event, tasks_of

    out: dict[str, dict[str, Any]] = {}
    with LocalCloud() as cloud:
        sqs, ddb, s3 = cloud.client("sqs"), cloud.client("dynamodb"), cloud.client("s3")
        settings = provision(sqs, ddb, s3)
        engine = Engine(settings=settings, ddb=ddb, sqs=sqs, s3=s3, events=cloud.client("events"))
        engine.submit(request("bench-mem-agg", shards))
        msgs = receive_all(sqs, settings.task_queue_url)
        tasks = tasks_of(msgs)
        dead = [
            {**m, "Attributes": {**m.get("Attributes", {}), "ApproximateReceiveCount": "5"}}
            for m in msgs[:10]
        ]
        events = {
            "lambdas.splitter": request("bench-mem-split", shards),
            "lambdas.aggregator": body_event([result_for(t).to_json() for t in tasks]),
            "lambdas.dlq_handler": sqs_event(dead, dlq_urls(sqs, settings)["tasks"]),
        }
        env = {**child_env(), **cloud.env(), **settings.as_env(), "PYTHONPATH": str(ROOT)}
        for module, event in events.items():
            proc = subprocess.run(
                [*SPAWN, sys.executable, "-c", INVOKE_PROBE.format(module=module)],
                cwd=ROOT,
                env=env,
                input=json.dumps(event),
                capture_output=True,
                text=True,
                check=True,
            )
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            answer = got.pop("answer")
            ok = answer.get("ok", True) and not answer.get("batchItemFailures")
            out[module] = {
                "event": f"{shards}-shard request"
                if module.endswith("splitter")
                else f"{len(event['Records'])} records",
                "import_ms": round(got["import_s"] * 1000, 1),
                "invoke_ms": round(got["invoke_s"] * 1000, 1),
                "maxrss_after_import_mib": round(got["maxrss_after_import_kb"] / 1024, 1),
                "maxrss_after_invocation_mib": round(got["maxrss_kb"] / 1024, 1),
                "answer_ok": bool(ok),
            }
            if not ok:
                raise RuntimeError(f"{module} failed its benchmark invocation: {answer}")
    return out


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
    result["invocation"] = invocation_memory()
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


def report_invocation(result: dict[str, Any]) -> None:
    print()
    print("One cold invocation per handler (fresh interpreter, local cloud), peak RSS:")
    rows = [
        [
            m,
            r["event"],
            f"{r['import_ms']:.0f}",
            f"{r['invoke_ms']:.0f}",
            f"{r['maxrss_after_import_mib']:.1f}",
            f"{r['maxrss_after_invocation_mib']:.1f}",
        ]
        for m, r in result["invocation"].items()
    ]
    print(
        table(
            ["handler", "event", "import ms", "first invoke ms", "peak RSS after import MiB", "peak RSS MiB"],
            rows,
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
    report_invocation(result)
    emit_json("import_time", result)
    return result


if __name__ == "__main__":
    main()
