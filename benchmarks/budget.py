"""The spend guard: a job with ``budget_usd`` overruns it by at most what was running when it was spent.

On one local cloud, ``--workers`` real ``shardq worker`` processes with a fixed
``--price-per-hour`` run a ``map`` job of ``--tasks`` tasks of ``--task-seconds`` each
(``benchmarks.budget_workload``, which logs each attempt's start and end), with a
``budget_usd`` of ``--budget-tasks`` tasks' worth; an in-process engine pumps the results (what
the aggregator Lambda does). Each budget in ``--budget-tasks`` is one run on fresh resources.

Per run, from the job record, its counted results and the workload's log:

* **spent at**: when the result that took the counted cost past the budget was recorded
  (``t_spent``); the job's ``budget_stop`` is marked by the same ``advance`` (``t_stop``);
* **running then**: tasks a worker had taken before ``t_stop`` (its check of the job passed: the
  worker's ``duration_s`` clock starts right after, before the training function loads) and
  counted at or after ``t_spent`` (results still on the results queue included); their cost is
  the bound (issue #25: "overruns it by at most the cost of the tasks already running when it
  was spent");
* **started after**: tasks taken after the stop mark (a worker's read of the job just before
  the mark, eventually consistent on AWS), and how long after;
* **overrun** = final cost − budget, against the bound;
* **dropped**: tasks dropped unrun (the job's ``drop_*`` counters).

    .venv/bin/python -m benchmarks.budget [--workers 4 --tasks 40 --task-seconds 1 --budget-tasks 8 20]
"""

from __future__ import annotations

import argparse
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
    machine,
    table,
    wait_for_workers,
)
from benchmarks.budget_workload import LOG_ENV
from shardq.core.advance import results_message
from shardq.core.contracts import TERMINAL_STATUSES
from shardq.core.engine import Engine
from shardq.core.settings import Settings
from shardq.local.cloud import LocalCloud
from shardq.local.resources import provision

ENTRYPOINT = "benchmarks.budget_workload:train"


def epoch(iso: str) -> float:
    """An ISO time of the job table → seconds since the epoch."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def spawn(cloud: LocalCloud, settings: Settings, where: Path, n: int, price: float, log: Path) -> Any:
    """One ``shardq worker`` process at ``price`` USD/h."""
    env = {**os.environ, **cloud.env(), "PYTHONPATH": str(ROOT), LOG_ENV: str(log)}
    path = where / f"worker-{n}.log"
    with path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shardq.cli", "worker",
             "--task-queue-url", settings.task_queue_url,
             "--results-queue-url", settings.results_queue_url,
             "--job-table", settings.job_table,
             "--concurrency", "1", "--wait-seconds", "1",
             "--price-per-hour", str(price), "--spot-notice", "off",
             "--worker-id", f"budget-{n}", "--log-format", "text",
             "--allow", "benchmarks.budget_workload"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return proc, path


def pump(engine: Engine, sqs: Any, settings: Settings) -> None:
    """One receive from the results queue into ``Engine.ingest`` (results and drop notices)."""
    msgs = sqs.receive_message(
        QueueUrl=settings.results_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
    ).get("Messages", [])
    if not msgs:
        return
    failures = engine.ingest([results_message(m["Body"]) for m in msgs])
    if failures:
        raise RuntimeError(f"the engine refused {len(failures)} results: {failures[0][1]}")
    sqs.delete_message_batch(
        QueueUrl=settings.results_queue_url,
        Entries=[{"Id": str(j), "ReceiptHandle": m["ReceiptHandle"]} for j, m in enumerate(msgs)],
    )


def run(cloud: LocalCloud, args: argparse.Namespace, budget_tasks: int, where: Path) -> dict[str, Any]:
    """One job with a budget of ``budget_tasks`` tasks' worth, start to end; its figures."""
    where.mkdir(parents=True)
    sqs, ddb, s3 = cloud.client("sqs"), cloud.client("dynamodb"), cloud.client("s3")
    settings = provision(sqs, ddb, s3, task_visibility_s=60)
    engine = Engine(settings=settings, ddb=ddb, sqs=sqs, s3=s3, events=cloud.client("events"))
    log = where / "attempts.log"
    task_cost = args.task_seconds * args.price / 3600
    budget = round(budget_tasks * task_cost, 6)
    fleet = [spawn(cloud, settings, where, n, args.price, log) for n in range(args.workers)]
    try:
        wait_for_workers([p for p, _ in fleet], [path for _, path in fleet], WORKER_START_TIMEOUT_S)
        time.sleep(1.0)
        job_id = engine.submit(
            {
                "job_id": f"budget-{budget_tasks}",
                "kind": "map",
                "dataset": {"uri": "synthetic://linear?dim=2", "num_samples": args.tasks},
                "sharding": {"shard_count": args.tasks},
                "max_parallel": args.tasks,
                "hyperparameters": {"seconds": args.task_seconds},
                "entrypoint": ENTRYPOINT,
                "budget_usd": budget,
            }
        )["job_id"]
        started = time.monotonic()
        while engine.store.get_job(job_id).status not in TERMINAL_STATUSES:
            if time.monotonic() - started > args.timeout:
                raise TimeoutError(f"job {job_id} still running after {args.timeout:.0f} s")
            pump(engine, sqs, settings)
    finally:
        for p, _ in fleet:
            p.send_signal(signal.SIGTERM)
        for p, _ in fleet:
            p.wait(timeout=60)
    job = engine.store.get_job(job_id)
    rows = sorted(engine.store.all_results(job_id), key=lambda r: r.recorded_at)
    attempts = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    stop = job.budget_stop or {}
    # When the counted cost first reached the budget (recording order), and the stop's own mark.
    total, t_spent = 0, None
    for row in rows:
        total += row.result.cost_micro_usd
        if t_spent is None and total >= round(budget * 1e6):
            t_spent = epoch(row.recorded_at)
    t_stop = epoch(stop["at"]) if stop else None
    counted_by = {row.result.shard_id: epoch(row.recorded_at) for row in rows}
    cost_of = {row.result.shard_id: row.result.cost_micro_usd for row in rows}
    # Running when it was spent: started before the stop was marked (the same ``advance`` that
    # counted the crossing result marks it) and counted at or after the crossing; results still
    # on the results queue at the crossing count too (their time was already spent).
    # A task is taken when its worker's check of the job passed: the worker's own clock for the
    # result's duration_s starts right after it (before the training function is even loaded).
    seconds = {row.result.shard_id: row.result.duration_s for row in rows}
    for a in attempts:
        a["taken"] = a["end"] - seconds.get(a["shard"], a["end"] - a["start"])
    running = (
        [a for a in attempts if a["taken"] <= t_stop and counted_by.get(a["shard"], 0) >= t_spent]
        if t_spent is not None and t_stop is not None
        else []
    )
    late_starts = [a for a in attempts if t_stop is not None and a["taken"] > t_stop]
    bound = sum(cost_of.get(a["shard"], 0) for a in running) / 1e6
    overrun = job.cost_micro_usd / 1e6 - budget
    return {
        "budget_tasks": budget_tasks,
        "budget_usd": budget,
        "status": job.status,
        "error": job.error,
        "cost_at_stop_usd": int(stop.get("cost_uusd", 0)) / 1e6,
        "final_cost_usd": job.cost_micro_usd / 1e6,
        "overrun_usd": round(overrun, 6),
        "running_at_spend": len(running),
        "bound_usd": round(bound, 6),
        "within_bound": overrun <= bound + 1e-9,
        "started_after_stop": len(late_starts),
        "started_after_stop_ms": [round(1000 * (a["taken"] - t_stop), 1) for a in late_starts if t_stop],
        "check_to_start_ms": round(1000 * max((a["start"] - a["taken"] for a in attempts), default=0.0), 1),
        "stop_mark_after_crossing_ms": None
        if t_stop is None or t_spent is None
        else round(1000 * (t_stop - t_spent), 1),
        "tasks_counted": len(rows),
        "dropped": sum(v for (kind, _, _), v in job.counters.items() if kind == "drop"),
        "wall_s": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--task-seconds", type=float, default=1.0)
    parser.add_argument("--price", type=float, default=36.0, help="USD per hour of each worker")
    parser.add_argument("--budget-tasks", type=int, nargs="+", default=[8, 20])
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/shardq-budget"))
    args = parser.parse_args(argv)
    m = machine()
    results = []
    with LocalCloud() as cloud:
        for budget_tasks in args.budget_tasks:
            where = args.out / f"{int(time.time())}-{budget_tasks}"
            results.append(run(cloud, args, budget_tasks, where))
    print(describe(m))
    print(
        f"{args.workers} workers at ${args.price:g}/h, a map job of {args.tasks} tasks of "
        f"{args.task_seconds:g} s (${args.task_seconds * args.price / 3600:.4f} a task)"
    )
    print(
        table(
            [
                "budget",
                "status",
                "at stop",
                "final",
                "overrun",
                "running then",
                "bound",
                "ok",
                "started after",
                "counted",
                "dropped",
            ],
            [
                [
                    f"${r['budget_usd']:.2f}",
                    r["status"],
                    f"${r['cost_at_stop_usd']:.4f}",
                    f"${r['final_cost_usd']:.4f}",
                    f"${r['overrun_usd']:.4f}",
                    r["running_at_spend"],
                    f"${r['bound_usd']:.4f}",
                    "yes" if r["within_bound"] else "NO",
                    r["started_after_stop"],
                    r["tasks_counted"],
                    r["dropped"],
                ]
                for r in results
            ],
        )
    )
    emit_json("budget", {"machine": m, "args": {k: str(v) for k, v in vars(args).items()}, "runs": results})
    return 0 if all(r["within_bound"] and r["status"] == "FAILED" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
