"""The aggregator's calls on a FedAvg round's critical path, counted (issue #27, item 3).

A round's coordination has two aggregator steps on its critical path: the step that records the
round's last train result (close the round, send the reduce) and the step that records the reduce's
result (send the next round, move the job to it). Each is a run of sequential DynamoDB, S3 and SQS
calls; on a warm Lambda their count times a call's latency is the step's time, so the count is the
figure that load does not distort.

This runs the engine in this process (as the aggregator Lambda does behind its event source) over a
fresh set of the stack's resources on the local cloud, a ``data_parallel`` job of ``--shards``
shards × ``--rounds`` rounds whose results are written here (no training, no worker: the tasks are
received and answered as ``tests.helpers.result_for`` does), and counts every boto3 call each step
makes (botocore's ``before-call`` event, per client), by operation, with the step's seconds and
each call's seconds. A step's calls are those of one ``Engine.ingest`` of the one result.

    .venv/bin/python -m benchmarks.round_calls [--shards 2] [--rounds 6] [--show-calls]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from typing import Any

from benchmarks._common import describe, emit_json, machine, table
from shardq.core.advance import results_message
from shardq.core.contracts import ShardTask
from shardq.core.engine import Engine
from shardq.local.cloud import LocalCloud
from shardq.local.resources import provision
from tests.helpers import receive_all, result_for

STEPS = ("last train result → reduce sent", "reduce result → next round sent")


class CallLog:
    """Every boto3 call of some clients: (operation, seconds), recorded while ``on``."""

    def __init__(self, clients: list[Any]) -> None:
        self.calls: list[tuple[str, float]] = []
        self.on = False
        self._started: dict[int, float] = {}
        for c in clients:
            c.meta.events.register("before-call", self._before)
            c.meta.events.register("after-call", self._after)

    def _before(self, model: Any, **kwargs: Any) -> None:
        if self.on:
            self._started[id(kwargs.get("context"))] = time.perf_counter()

    def _after(self, model: Any, **kwargs: Any) -> None:
        started = self._started.pop(id(kwargs.get("context")), None)
        if self.on and started is not None:
            self.calls.append(
                (f"{model.service_model.service_name}:{model.name}", time.perf_counter() - started)
            )


def _tasks(engine: Engine) -> list[ShardTask]:
    return [ShardTask.from_json(m["Body"]) for m in receive_all(engine.sqs, engine.settings.task_queue_url)]


def run(cloud: LocalCloud, args: argparse.Namespace) -> dict[str, Any]:
    """One job to its end; per step: the calls (in order, with their seconds) and the step's seconds."""
    clients = {name: cloud.client(name) for name in ("sqs", "dynamodb", "s3", "events")}
    settings = provision(clients["sqs"], clients["dynamodb"], clients["s3"])
    engine = Engine(
        settings=settings,
        ddb=clients["dynamodb"],
        sqs=clients["sqs"],
        s3=clients["s3"],
        events=clients["events"],
    )
    log = CallLog(list(clients.values()))
    job_id = engine.submit(
        {
            "kind": "data_parallel",
            "dataset": {"uri": "synthetic://linear?dim=4&noise=0.05&seed=3", "num_samples": 16 * args.shards},
            "sharding": {"shard_count": args.shards},
            "rounds": args.rounds,
            "entrypoint": "benchmarks.round_floor:noop_train",
        }
    )["job_id"]
    steps: dict[str, list[dict[str, Any]]] = {s: [] for s in STEPS}
    deadline = time.time() + 300.0
    while True:
        tasks = _tasks(engine)
        if not tasks:
            break
        results = [result_for(t) for t in tasks]
        for i, result in enumerate(results):
            last = i == len(results) - 1
            log.calls.clear()
            log.on = last
            began = time.perf_counter()
            failed = engine.ingest([results_message(result.to_json())], deadline=deadline)
            took = time.perf_counter() - began
            log.on = False
            assert not failed, failed
            if last:
                step = STEPS[0] if result.task_type == "train" else STEPS[1]
                steps[step].append({"seconds": took, "calls": list(log.calls)})
    job = engine.store.get_job(job_id)
    assert job.status == "SUCCEEDED", (job.status, job.error)
    # The job's last reduce ends it (no next round): not a round-to-round step.
    steps[STEPS[1]] = steps[STEPS[1]][:-1]
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--show-calls", action="store_true", help="print each step's calls in order")
    args = parser.parse_args(argv)
    m = machine()
    with LocalCloud() as cloud:
        steps = run(cloud, args)
    rows, out = [], {}
    for name, seen in steps.items():
        counts = [len(s["calls"]) for s in seen]
        per_call = [sec for s in seen for _, sec in s["calls"]]
        summary = {
            "calls": sorted(set(counts)),
            "by_operation": dict(Counter(op for op, _ in seen[-1]["calls"])),
            "order": [op for op, _ in seen[-1]["calls"]],
            "step_s_median": round(statistics.median(s["seconds"] for s in seen), 4),
            "call_s_median": round(statistics.median(per_call), 4),
        }
        out[name] = summary
        rows.append(
            [
                name,
                "/".join(map(str, summary["calls"])),
                f"{summary['step_s_median'] * 1000:.0f} ms",
                f"{summary['call_s_median'] * 1000:.1f} ms",
            ]
        )
    print(describe(m))
    print(f"{args.shards} shards × {args.rounds} rounds, the engine in-process on the local cloud")
    print(table(["step", "boto3 calls", "step (median)", "one call (median)"], rows))
    if args.show_calls:
        for name, summary in out.items():
            print(f"\n{name}:\n  " + "\n  ".join(summary["order"]))
    emit_json("round_calls", {"machine": m, "shards": args.shards, "rounds": args.rounds, "steps": out})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
