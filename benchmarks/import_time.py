"""Cold-start proxy: import time and peak memory of each Lambda handler in a fresh interpreter.

Every measurement is a new ``python -c`` process that times its own import with
``time.perf_counter`` and reports ``ru_maxrss``; the floors (``import boto3`` alone, and
boto3 plus the Powertools objects every handler builds) are measured in the same run,
interleaved with the handlers, so the differences are comparable on a noisy machine.
Each handler is measured in three environments (``MODES``): tracing off outside Lambda (as
the earlier figures were taken), tracing off in a Lambda container (the budget applies to
both), and tracing on in a Lambda container (active tracing); and so are the handlers of
a baseline commit (``--baseline``, by default the last one that built Powertools' ``Tracer``
eagerly), extracted with ``git archive`` and run against this tree's core, side by side.
One warm-up round runs first (discarded) so every ``.pyc`` exists before timing (``--no-warmup``
skips it: the test suite's smoke run).

    .venv/bin/python -m benchmarks.import_time [--runs 15] [--baseline REV | --baseline none]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, describe, emit_json, machine, median, table

HANDLERS = ("lambdas.splitter", "lambdas.aggregator", "lambdas.dlq_handler")
# What a handler may cost over ``import boto3`` with tracing off (issue 15's target).
BUDGET_MS = 30.0
# The last commit whose handlers built Powertools' Tracer at import whatever the tracing setting.
DEFAULT_BASELINE = "ab8173e"

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
# global recorder even when POWERTOOLS_TRACE_DISABLED=true (outside a Lambda container its sampler
# builds two botocore X-Ray clients on top).
NO_TRACER_FLOOR = POWERTOOLS_FLOOR.replace('; Tracer(service="bench")', "")
assert NO_TRACER_FLOOR != POWERTOOLS_FLOOR
# The parts of a handler's import, each alone over boto3, to attribute what is left over the floor.
PARTS = {
    "boto3 + Logger, Metrics": (
        "import boto3\nfrom aws_lambda_powertools import Logger, Metrics\n"
        'Logger(service="bench"); Metrics(namespace="bench", service="bench")'
    ),
    "boto3 + Powertools batch utility": "import boto3\nimport aws_lambda_powertools.utilities.batch",
    # The two pieces of it lambdas/deferred.py defers, and the utility as the handlers import it.
    "boto3 + asyncio": "import boto3\nimport asyncio",
    "boto3 + Powertools SQSRecord (every event data class)": (
        "import boto3\nfrom aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord"
    ),
    "boto3 + Powertools batch utility, deferred": (
        "import boto3\nfrom lambdas.deferred import import_powertools_batch\nimport_powertools_batch()"
    ),
    "boto3 + shardq core (engine)": "import boto3\nimport shardq.core.engine",
}
# Modules lambdas/deferred.py defers; each probe reports which of them are still unrun after its import.
DEFERRABLE = ("asyncio", "aws_lambda_powertools.utilities.data_classes")


# mode -> (in a Lambda container: LAMBDA_TASK_ROOT set, tracing on: no POWERTOOLS_TRACE_DISABLED).
# Outside a Lambda container the X-Ray SDK's recorder builds its centralized sampler (two botocore
# X-Ray clients); inside one it does not, so the earlier figures overstated the Tracer's cost there.
MODES = {
    "tracing off": (False, False),
    "tracing off, in Lambda": (True, False),
    "tracing on, in Lambda": (True, True),
}


@dataclass(frozen=True)
class Target:
    """One thing to import in a fresh interpreter: the statement, the environment mode, and from where."""

    name: str
    stmt: str
    mode: str = "tracing off"
    cwd: Path = ROOT
    handler: str | None = None
    baseline: bool = False


def targets(baseline_dir: Path | None) -> list[Target]:
    """The floors, then each handler in every mode, this tree's and the baseline's."""
    out = [
        Target("python (nothing)", "pass"),
        Target("boto3", "import boto3"),
        Target("boto3 + powertools", POWERTOOLS_FLOOR),
        Target("boto3 + powertools, no Tracer()", NO_TRACER_FLOOR),
        *(Target(name, stmt) for name, stmt in PARTS.items()),
    ]
    trees = [(ROOT, False)] + ([(baseline_dir, True)] if baseline_dir else [])
    for cwd, is_baseline in trees:
        for mode in MODES:
            for h in HANDLERS:
                name = f"{h}{' @baseline' if is_baseline else ''}, {mode}"
                # boto3 first, as every handler imports it: the same work, timed in two parts (PROBE).
                out.append(Target(name, f"import boto3\nimport {h}", mode, cwd, h, is_baseline))
    return out


def baseline_tree(rev: str, into: Path) -> Path | None:
    """``lambdas/`` of ``rev`` beside a link to this tree's ``shardq/``; None if git cannot give it."""
    try:
        archive = subprocess.run(
            ["git", "archive", rev, "lambdas"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"baseline {rev!r} not measured: {exc}", file=sys.stderr)
        return None
    (into / "shardq").symlink_to(ROOT / "shardq", target_is_directory=True)
    return into


# A statement that starts with ``import boto3`` is timed in two parts in the same interpreter, so
# its cost over boto3 is also measured within one process ("after boto3"): a difference between
# two processes' times carries both processes' noise, a difference within one carries less.
PROBE = """
import json, re, resource, sys, time
_stmt = {stmt!r}.lstrip("\\n")
_pre = "import boto3" if _stmt.startswith("import boto3\\n") else ""
_t0 = time.perf_counter()
exec(compile(_pre, "<pre>", "exec"))
_t1 = time.perf_counter()
exec(compile(_stmt[len(_pre):], "<bench>", "exec"))
_t2 = time.perf_counter()
_hwm = re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())
print(json.dumps({{
    "s": _t2 - _t0,
    "after_boto3_s": _t2 - _t1 if _pre else None,
    "deferred": [m for m in {deferrable!r} if type(sys.modules.get(m)).__name__ == "_Deferred"],
    "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "vmhwm_kb": int(_hwm.group(1)) if _hwm else None,
}}))
"""
# Linux keeps ru_maxrss across fork and exec, so a child spawned straight from this (large)
# process would report this process's peak. /bin/sh forks the interpreter instead (the
# trailing ":" stops it from exec-ing in place), so the probe's ru_maxrss is its own.
SPAWN = ["/bin/sh", "-c", '"$0" "$@"; :']


def child_env(mode: str = "tracing off") -> dict[str, str]:
    """The subprocess environment for a mode of ``MODES``: a region, .pyc caches allowed.

    Tracing on is what a Lambda container with active tracing has: ``LAMBDA_TASK_ROOT`` set and
    no ``POWERTOOLS_TRACE_DISABLED``, so Powertools builds and enables the X-Ray tracer (which
    patches botocore at import; nothing is sent at import time).
    """
    in_lambda, tracing = MODES[mode]
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # the Makefile exports it; Lambda has its .pyc in the zip or not
    env.pop("PYTHONPATH", None)
    env.pop("LAMBDA_TASK_ROOT", None)
    env["AWS_DEFAULT_REGION"] = "us-east-1"
    if in_lambda:
        env["LAMBDA_TASK_ROOT"] = str(ROOT)
    if tracing:
        env.pop("POWERTOOLS_TRACE_DISABLED", None)
    else:
        env["POWERTOOLS_TRACE_DISABLED"] = "true"
    return env


def measure_once(stmt: str, env: dict[str, str], cwd: Path = ROOT) -> dict[str, Any]:
    """One fresh interpreter: seconds spent in ``stmt``, peak RSS in KiB, modules left deferred."""
    out = subprocess.run(
        [*SPAWN, sys.executable, "-c", PROBE.format(stmt=stmt, deferrable=DEFERRABLE)],
        cwd=cwd,
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


# A Lambda's init builds its engine's clients: the time that takes in a fresh interpreter (boto3
# imported first, outside the timer), through the one factory the handlers use.
CLIENTS_PROBE = """
import json, time
import boto3
from shardq.core.clients import client
t0, c0 = time.perf_counter(), time.process_time()
for service in ("sqs", "dynamodb", "s3", "events"):
    client(service, "us-east-1")
print(json.dumps({"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}))
"""


def probe_runs(code: str, env: dict[str, str], runs: int) -> list[dict[str, Any]]:
    """``code`` run in ``runs`` fresh interpreters: the JSON each printed last."""
    got = []
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        )
        got.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return got


def client_setup(env: dict[str, str], runs: int) -> dict[str, float]:
    """Median wall and CPU time to build the four clients of a handler's engine (``runs`` fresh
    interpreters): one boto3 session shares botocore's loaded models between them."""
    got = probe_runs(CLIENTS_PROBE, env, runs)
    return {
        "clients": 4,
        "wall_ms": round(median([g["wall_s"] * 1000 for g in got]), 1),
        "cpu_ms": round(median([g["cpu_s"] * 1000 for g in got]), 1),
    }


def extra_over_floor(env: dict[str, str], top: int = 5) -> dict[str, dict[str, Any]]:
    """Per handler: modules it imports that boto3 + Powertools (no Tracer) does not, and their self time."""
    floor = importtime_modules(NO_TRACER_FLOOR, env)
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


DATACLASS_PROBE = """
import collections, dataclasses, json, time
import boto3
# Instrumentation only: dataclasses' private class builder, timed per class (CPython 3.11-3.13).
_build = dataclasses._process_class
_took = collections.defaultdict(lambda: [0, 0.0])
def _timed(cls, *args, **kwargs):
    t0 = time.perf_counter()
    try:
        return _build(cls, *args, **kwargs)
    finally:
        _took[cls.__module__.split(".")[0]][0] += 1
        _took[cls.__module__.split(".")[0]][1] += time.perf_counter() - t0
dataclasses._process_class = _timed
t0 = time.perf_counter()
import {module}
print(json.dumps({{"import_s": time.perf_counter() - t0, "by_package": _took}}))
"""


def dataclass_definitions(env: dict[str, str], runs: int = 5) -> dict[str, dict[str, Any]]:
    """Per handler, after ``import boto3``: how many dataclasses its import defines, and how long
    defining them takes (median of ``runs`` fresh interpreters), by top-level package."""
    out: dict[str, dict[str, Any]] = {}
    for h in HANDLERS:
        got = probe_runs(DATACLASS_PROBE.format(module=h), env, runs)
        packages = sorted({p for g in got for p in g["by_package"]})
        out[h] = {
            "import_ms": round(median([g["import_s"] * 1000 for g in got]), 1),
            "classes": {p: got[0]["by_package"].get(p, [0, 0])[0] for p in packages},
            "ms": {
                p: round(median([g["by_package"].get(p, [0, 0.0])[1] * 1000 for g in got]), 1)
                for p in packages
            },
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
        engine.submit(request("bench-mem-agg", shards, "data_parallel"))
        msgs = receive_all(sqs, settings.task_queue_url)
        tasks = tasks_of(msgs)
        dead = [
            {**m, "Attributes": {**m.get("Attributes", {}), "ApproximateReceiveCount": "5"}}
            for m in msgs[:10]
        ]
        events = {
            "lambdas.splitter": request("bench-mem-split", shards, "data_parallel"),
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


def sample(all_targets: list[Target], runs: int, warmup: bool = True) -> dict[str, list[dict[str, Any]]]:
    """``runs`` fresh-interpreter samples per target, interleaved, after one discarded warm-up round."""
    envs = {mode: child_env(mode) for mode in MODES}
    for t in all_targets if warmup else ():  # warm-up: compiles every .pyc the imports need; discarded
        measure_once(t.stmt, envs[t.mode], t.cwd)
    samples: dict[str, list[dict[str, Any]]] = {t.name: [] for t in all_targets}
    for i in range(runs):
        order = all_targets if i % 2 == 0 else all_targets[::-1]  # so drift favours no target
        for t in order:
            samples[t.name].append(measure_once(t.stmt, envs[t.mode], t.cwd))
    return samples


def summarize(got: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, quartiles and range of the import times; median peak memory; modules left deferred."""
    ms = sorted(s["s"] * 1000 for s in got)
    q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else (ms[0],) * 3
    return {
        "median_ms": round(median(ms), 1),
        "p25_ms": round(q1, 1),
        "p75_ms": round(q3, 1),
        "min_ms": round(ms[0], 1),
        "max_ms": round(ms[-1], 1),
        "maxrss_mib": round(median([s["maxrss_kb"] for s in got]) / 1024, 1),
        "vmhwm_mib": round(median([s["vmhwm_kb"] or 0 for s in got]) / 1024, 1),
        # Deferred in every run (lambdas/deferred.py), so a lost deferral shows in the figures' JSON.
        "deferred": sorted(set.intersection(*(set(s["deferred"]) for s in got))),
        **after_boto3(got),
    }


def after_boto3(got: list[dict[str, Any]]) -> dict[str, float]:
    """Median and fastest time over ``import boto3`` in the same interpreter, where measured."""
    ms = sorted(s["after_boto3_s"] * 1000 for s in got if s.get("after_boto3_s") is not None)
    if len(ms) != len(got):
        return {}
    return {"after_boto3_median_ms": round(median(ms), 1), "after_boto3_min_ms": round(ms[0], 1)}


def run(runs: int, baseline: str | None, warmup: bool = True) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="shardq-baseline-") as tmp:
        base_dir = baseline_tree(baseline, Path(tmp)) if baseline else None
        all_targets = targets(base_dir)
        samples = sample(all_targets, runs, warmup)
    rows: dict[str, dict[str, Any]] = {}
    by_key: dict[tuple[str | None, str, bool], dict[str, Any]] = {}
    for t in all_targets:
        rows[t.name] = {**summarize(samples[t.name]), "handler": t.handler, "mode": t.mode}
        rows[t.name]["baseline"] = t.baseline
        by_key[(t.handler, t.mode, t.baseline)] = rows[t.name]
    boto, boto_min = rows["boto3"]["median_ms"], rows["boto3"]["min_ms"]
    for t in all_targets:
        row = rows[t.name]
        # The median is the usual figure; the fastest run is the one least disturbed by other
        # processes on a loaded machine, so both are kept.
        row["over_boto3_ms"] = round(row["median_ms"] - boto, 1)
        row["min_over_boto3_ms"] = round(row["min_ms"] - boto_min, 1)
        base = by_key.get((t.handler, t.mode, True))
        if t.handler and not t.baseline and base:
            row["vs_baseline_ms"] = round(row["median_ms"] - base["median_ms"], 1)
            row["min_vs_baseline_ms"] = round(row["min_ms"] - base["min_ms"], 1)
    budgeted = [r for r in rows.values() if r["handler"] and not MODES[r["mode"]][1] and not r["baseline"]]
    return {
        "runs": runs,
        "warmup_runs": int(warmup),
        "budget_ms_over_boto3": BUDGET_MS,
        "baseline": baseline if base_dir else None,
        "load_average": os.getloadavg(),
        "targets": rows,
        "handlers_within_budget": all(r["over_boto3_ms"] <= BUDGET_MS for r in budgeted),
        "handlers_within_budget_by_min": all(r["min_over_boto3_ms"] <= BUDGET_MS for r in budgeted),
        "handlers_within_budget_after_boto3": all(r["after_boto3_median_ms"] <= BUDGET_MS for r in budgeted),
        "handlers_within_budget_after_boto3_by_min": all(
            r["after_boto3_min_ms"] <= BUDGET_MS for r in budgeted
        ),
        "extra_modules_over_floor": extra_over_floor(child_env()),
        "dataclass_definitions": dataclass_definitions(child_env(), runs=min(runs, 5)),
        "asset": asset(),
        "invocation": invocation_memory(),
        "client_setup": client_setup(child_env(), runs),
    }


def report(result: dict[str, Any]) -> None:
    def pair(a: float | None, b: float | None) -> str:
        return "" if a is None or b is None else f"{a:+.1f} / {b:+.1f}"

    rows = []
    for name, r in result["targets"].items():
        verdict = ""
        if r["handler"] and not MODES[r["mode"]][1] and not r["baseline"]:
            verdict = " / ".join(
                "ok" if d <= BUDGET_MS else "OVER"
                for d in (r["after_boto3_median_ms"], r["after_boto3_min_ms"])
            )
        rows.append(
            [
                name,
                f"{r['median_ms']:.1f}",
                f"{r['p25_ms']:.1f}–{r['p75_ms']:.1f}",
                f"{r['min_ms']:.1f}–{r['max_ms']:.1f}",
                pair(r["over_boto3_ms"], r["min_over_boto3_ms"]),
                pair(r.get("after_boto3_median_ms"), r.get("after_boto3_min_ms")),
                pair(r.get("vs_baseline_ms"), r.get("min_vs_baseline_ms")),
                f"{r['maxrss_mib']:.1f}",
                verdict,
            ]
        )
    load = ", ".join(f"{x:.1f}" for x in result["load_average"])
    print(
        f"Import time in a fresh interpreter: {result['runs']} runs per target after "
        f"{result['warmup_runs']} warm-up run (.pyc caches on); baseline {result['baseline'] or 'none'}; "
        f"load average at the end {load}"
    )
    headers = ["target", "median ms", "p25–p75 ms", "min–max ms", "vs boto3 ms (median / min)"]
    headers += ["after boto3, same process ms (median / min)", "vs baseline ms (median / min)"]
    headers += ["peak RSS MiB", f"after boto3 ≤ {BUDGET_MS:.0f} ms (median / min)"]
    print(table(headers, rows))
    print()
    print("Modules a handler imports beyond boto3 + Powertools without Tracer (one -X importtime run):")
    extra_rows = [
        [h, e["modules"], f"{e['self_ms']:.1f}", ", ".join(f"{m} {ms}" for m, ms in e["top"][:3])]
        for h, e in result["extra_modules_over_floor"].items()
    ]
    print(table(["handler", "modules", "self ms", "largest (ms)"], extra_rows))
    print()
    print(
        "Dataclasses a handler's import defines after boto3, and the time defining them takes (median of 5):"
    )
    dc_rows = [
        [h, f"{d['import_ms']:.1f}", ", ".join(f"{p} {n}: {d['ms'][p]:.1f}" for p, n in d["classes"].items())]
        for h, d in result["dataclass_definitions"].items()
    ]
    print(table(["handler", "import ms", "package: classes, ms"], dc_rows))
    print()
    deferred = sorted({m for r in result["targets"].values() for m in r["deferred"]})
    print(
        f"Left deferred by lambdas/deferred.py in every run (where imported): {', '.join(deferred) or 'none'}"
    )
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
    setup = result["client_setup"]
    print()
    print(
        f"Building a handler's {setup['clients']} clients in a fresh interpreter (median): "
        f"{setup['wall_ms']:.0f} ms wall, {setup['cpu_ms']:.0f} ms CPU"
    )
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
    parser.add_argument(
        "--baseline",
        default=DEFAULT_BASELINE,
        help=f"git revision whose handlers run beside this tree's, or 'none' (default {DEFAULT_BASELINE})",
    )
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the discarded warm-up round (the test suite's smoke run; .pyc writes then count)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    baseline = None if args.baseline.lower() == "none" else args.baseline
    result = {**run(args.runs, baseline, warmup=not args.no_warmup), "machine": machine()}
    print(describe(result["machine"]))
    report(result)
    report_invocation(result)
    emit_json("import_time", result)
    return result


if __name__ == "__main__":
    main()
