"""Seconds per FedAvg round on the deployed local stack with a no-op trainer (issue #27, item 3).

One ``LocalCloud``; the real CDK stack deployed into it (``shardq.local.deploy.deploy_stack``); two
``shardq worker`` processes (``--concurrency 1``, the default 20 s long poll, as a fleet runs them);
a ``data_parallel`` job of ``--shards`` shards × ``--rounds`` rounds whose training function is
``noop_train`` (writes a 4-float model, nothing else), submitted through the deployed splitter.
Per round the plane crosses the results queue's event source twice (the round's last train result,
then the reduce's result) and the task queue twice (the reduce, then the next round's tasks).

Two variants in one run, both clouds up at once (each with its deployed stack and its two workers)
and the jobs alternating between them, so the shared machine's load falls on both alike:

* ``before``: ministack as released (``LocalCloud(fixes=False)``) and workers started with
  ``--fast-results-queue-url off``: every result takes the bulk results queue, as before issue #27;
* ``after``: the local cloud as shardq starts it (``shardq.local.ministack_fixes``: long polls and
  event sources answer as soon as AWS's would) and workers reading the stack's outputs, so reduce
  results and small rounds' results take the fast queue (``shardq.core.result_routes``). The local
  cloud ignores batching windows, so the route changes little here; on AWS it removes two windows
  per round (``shardq estimate --latency``).

Figures: seconds per round = (the job's end, seen by polling every 10 ms − the moment round 1
started) / (rounds − 1), which leaves out the submit and round 0's first pickups; the median over
``--repeats`` jobs per variant; and where a round's time goes, per leg (medians over the rounds of
every job): the train tasks' pickup (round start → the later shard's no-op start), train start →
its result recorded, recorded → the round closed (the reduce sent), the reduce's leg (closed →
its result recorded: pickup, averaging, upload, result), and recorded → the next round started.

    .venv/bin/python -m benchmarks.round_floor [--shards 2] [--rounds 12] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import (
    ROOT,
    WORKER_START_TIMEOUT_S,
    describe,
    emit_json,
    machine,
    table,
    wait_for_workers,
)
from shardq.core.contracts import TERMINAL_STATUSES
from shardq.core.jobstore import JobStore
from shardq.local.cloud import LocalCloud
from shardq.local.deploy import deploy_stack


def noop_train(task: Any, ctx: Any) -> dict[str, Any]:
    """The no-op trainer: write a 4-float model (the reduce averages models), note the start time."""
    np.savez(Path(ctx.output_dir) / "model.npz", w=np.zeros(4), b=np.float64(0.0))
    return {"metrics": {"started_at": time.time()}, "num_samples": 1}


def request(job_id: str, shards: int, rounds: int) -> dict[str, Any]:
    """A data_parallel job whose shards train nothing."""
    return {
        "job_id": job_id,
        "kind": "data_parallel",
        "dataset": {"uri": "synthetic://linear?dim=4&noise=0.05&seed=3", "num_samples": 16 * shards},
        "sharding": {"shard_count": shards},
        "rounds": rounds,
        "entrypoint": "benchmarks.round_floor:noop_train",
    }


def start_workers(
    cloud: LocalCloud, count: int, logs: Path, name: str, route: str
) -> list[subprocess.Popen[bytes]]:
    """``count`` worker processes; with ``route`` "bulk" they send every result to the bulk queue."""
    env = {**os.environ, **cloud.env(), "PYTHONPATH": str(ROOT), "POWERTOOLS_TRACE_DISABLED": "true"}
    # "off": every result takes the bulk results queue, as a worker older than the fast queue sends.
    flags = ["--fast-results-queue-url", "off"] if route == "bulk" else []
    procs = []
    for i in range(count):
        with (logs / f"{name}-{i}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "shardq.cli", "--stack", "shardq", "worker",
                     "--worker-id", f"{name}-{i}", "--allow", "benchmarks.*", "--concurrency", "1", *flags],
                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
    return procs


LEGS = ("train pickup", "train start → recorded", "recorded → closed", "reduce leg", "reduce → next round")


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def run_job(
    cloud: LocalCloud, stack: dict[str, str], job_id: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Submit one job, watch its (round, phase) moves to its end; seconds per round and the legs."""
    store = JobStore(stack["JobTableName"], cloud.client("dynamodb"))
    answer = cloud.client("lambda").invoke(
        FunctionName=stack["SplitterFunctionName"],
        Payload=json.dumps(request(job_id, args.shards, args.rounds)).encode(),
    )
    assert "FunctionError" not in answer, answer["Payload"].read()
    seen: dict[tuple[int, str], float] = {}
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        seen.setdefault((job.round, job.phase), time.time())
        if job.status in TERMINAL_STATUSES:
            end = time.time()
            assert job.status == "SUCCEEDED", f"{job_id} ended {job.status}"
            break
        time.sleep(0.01)
    else:
        raise AssertionError(f"{job_id} did not end within {args.timeout} s")
    legs: dict[str, list[float]] = {leg: [] for leg in LEGS}
    for r in range(1, args.rounds - 1):  # rounds with a start, a close and a next round all observed
        train, (reduce,) = store.results(job_id, r, "train"), store.results(job_id, r, "reduce")
        started = seen.get((r, "train"))
        closed, following = seen.get((r, "reduce")), seen.get((r + 1, "train"))
        if started is None or closed is None or following is None:
            continue  # a move faster than the 10 ms poll
        last_start = max(float(x.result.metrics["started_at"]) for x in train)
        last_recorded, reduced = max(_ts(x.recorded_at) for x in train), _ts(reduce.recorded_at)
        for leg, value in zip(
            LEGS,
            (
                last_start - started,
                last_recorded - last_start,
                closed - last_recorded,
                reduced - closed,
                following - reduced,
            ),
            strict=True,
        ):
            legs[leg].append(value)
    return {
        "job_id": job_id,
        "s_per_round": round((end - seen[(1, "train")]) / (args.rounds - 1), 4),
        "legs_ms": {leg: round(statistics.median(v) * 1000, 1) for leg, v in legs.items() if v},
    }


def pickup_latency(cloud: LocalCloud, samples: int) -> list[float]:
    """Seconds from a SendMessage's answer to a waiting long poll's answer, on a FIFO queue.

    What each task pickup waits for beyond the worker's own work: a receive is waiting (as an idle
    worker's is) when the message is sent, after an irregular pause so the send falls anywhere in
    the emulator's re-check interval.
    """
    sender, receiver = cloud.client("sqs"), cloud.client("sqs")
    url = sender.create_queue(
        QueueName=f"pickup-{time.time_ns()}.fifo",
        Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"},
    )["QueueUrl"]
    waits = []
    for i in range(samples):
        got: dict[str, Any] = {}

        def receive(into: dict[str, Any]) -> None:
            answer = receiver.receive_message(QueueUrl=url, WaitTimeSeconds=10, MaxNumberOfMessages=1)
            into["at"], into["message"] = time.perf_counter(), answer["Messages"][0]

        waiting = threading.Thread(target=receive, args=(got,))
        waiting.start()
        time.sleep(0.15 + (i % 7) * 0.013)
        sender.send_message(QueueUrl=url, MessageBody=f"m{i}", MessageGroupId="g")
        sent = time.perf_counter()
        waiting.join(timeout=30)
        waits.append(got["at"] - sent)
        sender.delete_message(QueueUrl=url, ReceiptHandle=got["message"]["ReceiptHandle"])
    sender.delete_queue(QueueUrl=url)
    return waits


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=60)


VARIANT_SETUP = {  # variant: (ministack fixes, workers' fast route)
    "before": (False, "bulk"),
    "after": (True, "fast"),
}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Both clouds up at once, each with its stack and its two workers; jobs alternate between them."""
    variants = {v: VARIANT_SETUP[v] for v in args.variants}
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with ExitStack() as clouds:
        setups: dict[str, tuple[LocalCloud, dict[str, str]]] = {}
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for variant, (fixes, route) in variants.items():
                cloud = clouds.enter_context(LocalCloud(fixes=fixes))
                assert cloud.state_dir is not None
                setups[variant] = (cloud, deploy_stack(cloud, context=dict(args.context)))
                started = start_workers(cloud, 2, cloud.state_dir, variant, route)
                procs += started
                logs = [cloud.state_dir / f"{variant}-{i}.log" for i in range(2)]
                wait_for_workers(started, logs, WORKER_START_TIMEOUT_S)
            time.sleep(1.0)
            pickups: dict[str, list[float]] = {v: [] for v in variants}
            for r in range(2):  # the probe first, alternating, before any job runs
                for variant in list(variants) if r == 0 else list(reversed(variants)):
                    pickups[variant] += pickup_latency(setups[variant][0], args.pickup_samples // 2)
            for r in range(args.repeats):
                order = list(variants) if r % 2 == 0 else list(reversed(variants))
                for variant in order:
                    cloud, stack = setups[variant]
                    runs[variant].append(run_job(cloud, stack, f"floor-{variant}-{r}", args))
        finally:
            _stop(procs)  # the workers before their clouds
    return {
        "shards": args.shards,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "context": dict(args.context),
        "runs": runs,
        "pickup_ms": {
            v: {
                "median": round(statistics.median(w) * 1000, 1),
                "mean": round(statistics.mean(w) * 1000, 1),
                "p90": round(sorted(w)[int(0.9 * len(w))] * 1000, 1),
            }
            for v, w in pickups.items()
        },
        "s_per_round_median": {
            v: round(statistics.median(r["s_per_round"] for r in runs[v]), 4) for v in runs
        },
        "legs_ms_median": {
            v: {
                leg: round(statistics.median(r["legs_ms"][leg] for r in runs[v] if leg in r["legs_ms"]), 1)
                for leg in LEGS
            }
            for v in runs
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--pickup-samples", type=int, default=60, help="send → waiting receive samples per cloud"
    )
    parser.add_argument(
        "--context", action="append", default=[], type=lambda kv: tuple(kv.split("=", 1)),
        help="cdk context KEY=VALUE for the deploy (e.g. results_batch_window_seconds=20)",
    )  # fmt: skip
    parser.add_argument(
        "--variants", default="before,after", type=lambda text: text.split(","),
        help="which of before,after to run (one alone: e.g. to compare two checkouts, run in turn)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.context = [(k, json.loads(v)) for k, v in args.context]
    m = machine()
    result = {"machine": m, **measure(args)}
    print(describe(m))
    print(f"{args.shards} shards × {args.rounds} rounds, no-op trainer, deployed stack on the local cloud")
    print(
        table(
            ["variant", "s/round (median)", "per job", *LEGS],
            [
                [
                    v,
                    f"{result['s_per_round_median'][v]:.3f}",
                    ", ".join(f"{r['s_per_round']:.3f}" for r in result["runs"][v]),
                    *(f"{result['legs_ms_median'][v][leg]:.0f} ms" for leg in LEGS),
                ]
                for v in result["runs"]
            ],
        )
    )
    print()
    print(
        table(
            ["variant", "send → waiting receive: median", "mean", "p90"],
            [
                [v, f"{p['median']} ms", f"{p['mean']} ms", f"{p['p90']} ms"]
                for v, p in result["pickup_ms"].items()
            ],
        )
    )
    emit_json("round_floor", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
