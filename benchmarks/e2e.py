"""End to end on the local cloud: N no-op shards through the deployed stack with W worker processes.

One ``LocalCloud``; the real CDK stack deployed into it (``shardq.local.deploy.deploy_stack``,
as ``make run`` does); W ``shardq worker`` processes (``--concurrency 1``, the default
20-second long poll), started as ``shardq.demo`` starts them. A ``map`` job of N shards whose
entrypoint is ``benchmarks.e2e:noop`` (it only notes the wall-clock time it started) is
submitted by invoking the deployed splitter Lambda; the deployed aggregator, behind its
event source mapping, records the results and finishes the job.

Timestamps, all wall clock on this machine:

* ``submit``: just before the splitter is invoked; the job record's ``created_at``;
* ``start``: each shard's no-op start (in its recorded result's metrics);
* ``end``: the worker's log line after it posted the result and deleted the task;
* ``finished``: when polling the job record (every 0.2 s) first saw it SUCCEEDED (the record's
  ``finished_at`` is the last recording time, not the moment of the transition).

Figures: per-shard pickup latency = start − created_at (every shard is enqueued within the
splitter's one fan-out right after ``created_at``, so this is enqueue → worker start plus at
most the fan-out's own duration); the dispatch gap between one task's end and the same
worker's next start; and coordination overhead per shard = (makespan × W − Σ no-op time) / N,
i.e. the worker-time per shard not spent in the training function.

    .venv/bin/python -m benchmarks.e2e [--shards 500] [--workers 4]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks._common import (
    ROOT,
    WORKER_START_TIMEOUT_S,
    describe,
    emit_json,
    load,
    log_tail,
    machine,
    median,
    table,
    wait_for_workers,
)
from shardq.core.contracts import TERMINAL_STATUSES
from shardq.core.jobstore import JobStore
from shardq.local.cloud import LocalCloud
from shardq.local.deploy import deploy_stack


def noop(task: Any, ctx: Any) -> dict[str, Any]:
    """The no-op training function: note when it started, do nothing."""
    return {"metrics": {"started_at": time.time()}, "num_samples": 1}


def ts(iso: str) -> float:
    """ISO 8601 (``Z`` or offset) → seconds since the epoch."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def start_workers(
    cloud: LocalCloud, count: int, logs: Path, *, stack: str = "shardq", allow: str = "benchmarks.e2e"
) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, **cloud.env(), "PYTHONPATH": str(ROOT), "POWERTOOLS_TRACE_DISABLED": "true"}
    procs = []
    for i in range(count):
        with (logs / f"worker-{i}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "shardq.cli",
                        "--stack",
                        stack,
                        "worker",
                        "--concurrency",
                        "1",
                        "--worker-id",
                        f"bench-{i}",
                        "--allow",
                        allow,
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=40)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def task_ends(logs: Path) -> dict[int, float]:
    """shard id → when its worker logged the task done (result posted, task deleted)."""
    out: dict[int, float] = {}
    for path in logs.glob("worker-*.log"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if (
                "status" in entry
                and "shard_id" in entry
                and str(entry.get("message", "")).startswith("task ")
            ):
                out[int(entry["shard_id"])] = ts(entry["timestamp"])
    return out


def run(
    shards: int, workers: int, timeout: float, start_timeout: float = WORKER_START_TIMEOUT_S
) -> dict[str, Any]:
    with LocalCloud() as cloud:
        assert cloud.state_dir is not None
        t0 = time.monotonic()
        outputs = deploy_stack(cloud)
        deploy_s = time.monotonic() - t0
        logs = cloud.state_dir / "bench-workers"
        logs.mkdir()
        procs = start_workers(cloud, workers, logs)
        try:
            worker_start_s = wait_for_workers(
                procs, [logs / f"worker-{i}.log" for i in range(workers)], start_timeout
            )
            time.sleep(2.0)  # every worker inside its first long poll
            request = {
                "job_id": f"e2e-{int(time.time())}",
                "kind": "map",
                "dataset": {"uri": "synthetic://linear?dim=8&noise=0.05&seed=7", "num_samples": shards},
                "sharding": {"shard_count": shards},
                "max_parallel": 64,
                "entrypoint": "benchmarks.e2e:noop",
            }
            lam = cloud.client("lambda")
            submitted = time.time()
            answer = json.loads(
                lam.invoke(
                    FunctionName=outputs["SplitterFunctionName"], Payload=json.dumps(request).encode()
                )["Payload"].read()
            )
            invoke_s = time.time() - submitted
            if not answer.get("ok"):
                raise RuntimeError(f"splitter rejected the request: {answer}")
            store = JobStore(outputs["JobTableName"], cloud.client("dynamodb"))
            job_id = answer["job_id"]
            end_by = time.monotonic() + timeout
            while True:
                job = store.get_job(job_id)
                if job.status in TERMINAL_STATUSES:
                    break
                if time.monotonic() > end_by:
                    tails = "\n".join(f"{p.name}:\n{log_tail(p, 5)}" for p in sorted(logs.glob("*.log")))
                    raise TimeoutError(
                        f"job {job_id} not finished after {timeout:.0f} s ({load()}): {job.status}, "
                        f"{job.done(0, 'train')}/{shards} done; the workers' logs end:\n{tails}"
                    )
                time.sleep(0.2)
            observed_done = time.time()
        finally:
            stop_workers(procs)
        results = store.results(job_id, 0)
        ends = task_ends(logs)
    created = ts(job.created_at)
    # finished_at is the latest recording time (deterministic, see docs/ARCHITECTURE.md), not the
    # moment of the transition: the transition is observed by polling every 0.2 s.
    finished = observed_done
    ids = [r.result.shard_id for r in results]
    if job.status != "SUCCEEDED" or sorted(ids) != list(range(shards)):
        raise RuntimeError(f"job {job.status}: {len(set(ids))} distinct shards recorded of {shards}")
    starts = {r.result.shard_id: float(r.result.metrics["started_at"]) for r in results}
    by_worker: dict[str, list[int]] = {}
    for r in results:
        by_worker.setdefault(r.result.worker_id or "?", []).append(r.result.shard_id)
    pickup = [starts[s] - created for s in range(shards)]
    gaps: list[float] = []
    busy = 0.0
    for sids in by_worker.values():
        sids.sort(key=lambda s: starts[s])
        for a, b in itertools.pairwise(sids):
            if a in ends:
                gaps.append(starts[b] - ends[a])
        busy += sum(ends[s] - starts[s] for s in sids if s in ends)
    last_end = max(ends.values()) if ends else max(starts.values())
    first_start = min(starts.values())
    makespan = last_end - created
    # A no-op's own time is ~0: the worker-time per shard is all coordination.
    overhead_ms = (makespan * workers) / shards * 1000
    return {
        "shards": shards,
        "workers": workers,
        "deploy_s": round(deploy_s, 1),
        "worker_start_s": round(worker_start_s, 1),
        "splitter_invoke_s": round(invoke_s, 3),
        "submit_to_created_s": round(created - submitted, 3),
        "first_pickup_s": round(first_start - created, 3),
        "pickup_median_s": round(median(pickup), 3),
        "pickup_p95_s": round(pct(pickup, 0.95), 3),
        "dispatch_gap_median_ms": round(median(gaps) * 1000, 1) if gaps else None,
        "dispatch_gap_p95_ms": round(pct(gaps, 0.95) * 1000, 1) if gaps else None,
        "task_start_to_done_median_ms": round(median([ends[s] - starts[s] for s in ends]) * 1000, 1),
        "makespan_s": round(makespan, 2),
        "shards_per_s": round(shards / makespan, 1),
        "coordination_overhead_ms_per_shard": round(overhead_ms, 1),
        "last_result_to_finished_s": round(finished - last_end, 2),
        "submit_to_finished_s": round(finished - submitted, 2),
        "tasks_per_worker": sorted(len(v) for v in by_worker.values()),
        "worker_busy_share": round(busy / (makespan * workers), 3),
        "job_status": job.status,
    }


def report(r: dict[str, Any]) -> None:
    print()
    print(f"{r['shards']} no-op shards, {r['workers']} worker processes, deployed stack on the local cloud")
    rows = [
        ["deploy (cdk bootstrap + deploy)", f"{r['deploy_s']:.1f} s"],
        ["worker processes started (all logged 'worker started')", f"{r['worker_start_s']:.1f} s"],
        ["splitter invoke (submit → answer)", f"{r['splitter_invoke_s'] * 1000:.0f} ms"],
        ["first pickup (created_at → first start)", f"{r['first_pickup_s'] * 1000:.0f} ms"],
        ["pickup latency (created_at → start), median", f"{r['pickup_median_s']:.2f} s"],
        ["pickup latency, p95", f"{r['pickup_p95_s']:.2f} s"],
        ["dispatch gap (task done → same worker's next start), median", f"{r['dispatch_gap_median_ms']} ms"],
        ["dispatch gap, p95", f"{r['dispatch_gap_p95_ms']} ms"],
        ["no-op start → result posted and task deleted, median", f"{r['task_start_to_done_median_ms']} ms"],
        ["coordination overhead per shard (worker-time)", f"{r['coordination_overhead_ms_per_shard']} ms"],
        ["makespan (created_at → last task done)", f"{r['makespan_s']} s ({r['shards_per_s']} shards/s)"],
        ["last task done → job SUCCEEDED", f"{r['last_result_to_finished_s']} s"],
        ["submit → job SUCCEEDED", f"{r['submit_to_finished_s']} s"],
        ["tasks per worker", ", ".join(map(str, r["tasks_per_worker"]))],
    ]
    print(table(["figure", "value"], rows))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=500)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the job to finish")
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=WORKER_START_TIMEOUT_S,
        help="seconds for the worker processes to start (a bound for a hung run, not a target)",
    )
    args = parser.parse_args(argv)
    result = {**run(args.shards, args.workers, args.timeout, args.start_timeout), "machine": machine()}
    print(describe(result["machine"]))
    report(result)
    emit_json("e2e", result)
    return result


if __name__ == "__main__":
    main()
