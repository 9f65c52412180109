"""Splitter fan-out throughput and SQS calls per task, against the local cloud, beside a naive baseline.

One ministack (``LocalCloud``) serves the whole run; every measurement gets freshly
provisioned queues, table and bucket, which are deleted again afterwards so the
emulator's state does not grow from one measurement to the next. Per repeat:

* ``engine``: ``Engine.submit`` of an N-shard request (validate, job record, round-0
  fan-out through ``FanOut``: SendMessageBatch of 10, 8 batches in flight, cursor
  checkpoint every 500 tasks), SQS calls counted by ``tests.helpers.CountingClient``.
* ``naive``: one ``send_message`` per task, sequential, with the same bodies, group ids
  and dedup ids the engine produces (bodies differ only in the fresh bucket's name, which
  has the same length in every set; repeat 1 reads every queue back to check this).
* ``batched, 1 in flight``: ``FanOut`` with ``max_in_flight=1``, to split the engine's
  gain into batching and concurrency.

The order of the variants alternates between repeats; the figures are medians, and
the throughput ratio is the median of the per-repeat ratios.

    .venv/bin/python -m benchmarks.fanout [--tasks 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks._common import describe, emit_json, machine, median, table
from shardq.core import planning
from shardq.core.contracts import TrainingRequest
from shardq.core.engine import Engine
from shardq.core.enqueue import task_message
from shardq.core.fanout import FanOut, Message
from shardq.core.settings import Settings
from shardq.local.cloud import LocalCloud
from shardq.local.resources import dlq_urls, provision
from tests.helpers import CountingClient, receive_all

# Targets (issue 8): SQS API calls per enqueued task on the happy path; throughput vs the naive loop.
CALLS_PER_TASK_TARGET = 0.105
SPEEDUP_TARGET = 6.0
VARIANTS = ("engine", "naive", "batched, 1 in flight")


def request(job_id: str, tasks: int, kind: str = "map") -> dict[str, Any]:
    """A request of ``tasks`` shards shaped like examples/requests/data_parallel.json: kind ``map``
    (up to a million shards; a round fans out the same way for every kind) or ``data_parallel``
    (one round, up to 10,000 shards: what the aggregator then does is a reduce)."""
    return {
        "job_id": job_id,
        "kind": kind,
        **({"rounds": 1} if kind == "data_parallel" else {}),
        "dataset": {"uri": "synthetic://linear?dim=8&noise=0.05&seed=7", "num_samples": tasks * 10},
        "sharding": {"shard_count": tasks},
        "model": {"name": "linear-regression"},
        "hyperparameters": {"lr": 0.03, "epochs": 1, "batch_size": 64},
        "max_parallel": 64,
        "max_failed_shards": 0,
        "entrypoint": "examples.linear:train",
    }


def task_messages(payload: dict[str, Any], settings: Settings) -> Iterator[Message]:
    """The round-0 messages exactly as ``Engine.enqueue`` builds them (body, group id, dedup id)."""
    req = TrainingRequest.from_dict(payload)
    job_id = payload["job_id"]
    layout = planning.Layout(settings.artifact_bucket, job_id)
    for i in range(req.task_count):
        yield task_message(planning.train_task(req, job_id, layout, 0, i, None), req.max_parallel)


class Timeline:
    """Wraps a client and notes when each call returned and how many messages it carried."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.exceptions = real.exceptions
        self.events: list[tuple[float, int]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            out = attr(*args, **kwargs)
            self.events.append((time.perf_counter(), len(kwargs.get("Entries", [None]))))
            return out

        return call

    def quarter_rates(self, started: float) -> dict[str, float]:
        """Messages/s over the first quarter of the messages sent and over the last quarter."""
        events = sorted(self.events)
        total = sum(n for _, n in events)
        head: tuple[float, int] | None = None  # (time, messages done) when a quarter was done
        tail: tuple[float, int] | None = None  # (time, messages done) when three quarters were done
        done = 0
        for t, n in events:
            done += n
            if head is None and done >= total / 4:
                head = (t, done)
            if tail is None and done >= total * 3 / 4:
                tail = (t, done)
        assert head is not None and tail is not None
        end = events[-1][0]
        first = head[1] / max(head[0] - started, 1e-9)
        last = (total - tail[1]) / max(end - tail[0], 1e-9) if total > tail[1] else float("nan")
        return {"first_quarter_tasks_per_s": round(first, 1), "last_quarter_tasks_per_s": round(last, 1)}


class Bench:
    """The clients of one local cloud, and fresh resources per measurement."""

    def __init__(self, cloud: LocalCloud) -> None:
        self.sqs = cloud.client("sqs")
        self.ddb = cloud.client("dynamodb")
        self.s3 = cloud.client("s3")
        self.events = cloud.client("events")

    def fresh(self) -> Settings:
        return provision(self.sqs, self.ddb, self.s3)

    def queued(self, settings: Settings) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=settings.task_queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"])

    def bodies(self, settings: Settings) -> list[str]:
        """Every body on the task queue, with this set's bucket name (same length in every set) masked."""
        got = receive_all(self.sqs, settings.task_queue_url, attributes=False)
        return sorted(m["Body"].replace(settings.artifact_bucket, "<bucket>") for m in got)

    def drop(self, settings: Settings) -> None:
        """Delete the measurement's queues, table and bucket (outside the timed part)."""
        dlqs = dlq_urls(self.sqs, settings)
        for url in (settings.task_queue_url, settings.results_queue_url, dlqs["tasks"], dlqs["results"]):
            self.sqs.delete_queue(QueueUrl=url)
        self.ddb.delete_table(TableName=settings.job_table)
        self.s3.delete_bucket(Bucket=settings.artifact_bucket)

    # -- the variants: each returns (elapsed s, SQS calls, extra figures) -----------------------

    def engine(self, payload: dict[str, Any], settings: Settings) -> tuple[float, int, dict[str, Any]]:
        timeline = Timeline(self.sqs)
        sqs = CountingClient(timeline)
        ddb = CountingClient(self.ddb)
        engine = Engine(settings=settings, ddb=ddb, sqs=sqs, s3=self.s3, events=self.events)
        engine.fanout.sqs = sqs
        started = time.perf_counter()
        answer = engine.submit(payload)
        elapsed = time.perf_counter() - started
        assert answer["created"] and answer["shards"] == payload["sharding"]["shard_count"], answer
        extra = {
            "sqs_ops": dict(sqs.counts),
            "dynamodb_calls": sum(ddb.counts.values()),
            **timeline.quarter_rates(started),
        }
        return elapsed, sum(sqs.counts.values()), extra

    def naive(self, payload: dict[str, Any], settings: Settings) -> tuple[float, int, dict[str, Any]]:
        timeline = Timeline(self.sqs)
        sqs = CountingClient(timeline)
        started = time.perf_counter()
        for m in task_messages(payload, settings):
            sqs.send_message(
                QueueUrl=settings.task_queue_url,
                MessageBody=m.body,
                MessageGroupId=m.group_id,
                MessageDeduplicationId=m.dedup_id,
            )
        elapsed = time.perf_counter() - started
        return (
            elapsed,
            sum(sqs.counts.values()),
            {"sqs_ops": dict(sqs.counts), **timeline.quarter_rates(started)},
        )

    def batched_serial(
        self, payload: dict[str, Any], settings: Settings
    ) -> tuple[float, int, dict[str, Any]]:
        timeline = Timeline(self.sqs)
        sqs = CountingClient(timeline)
        fan = FanOut(sqs, settings.task_queue_url, max_in_flight=1)
        started = time.perf_counter()
        fan.send(task_messages(payload, settings))
        elapsed = time.perf_counter() - started
        return (
            elapsed,
            sum(sqs.counts.values()),
            {"sqs_ops": dict(sqs.counts), **timeline.quarter_rates(started)},
        )


def run(tasks: int, repeats: int, verify: bool) -> dict[str, Any]:
    samples: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    verified: bool | None = None
    with LocalCloud() as cloud:
        bench = Bench(cloud)
        variants: dict[str, Callable[[dict[str, Any], Settings], tuple[float, int, dict[str, Any]]]] = {
            "engine": bench.engine,
            "naive": bench.naive,
            "batched, 1 in flight": bench.batched_serial,
        }
        # Warm-up: connection pools, botocore models, ministack's first-request paths. Discarded.
        warm = bench.fresh()
        bench.engine(request(f"bench-warm-{uuid.uuid4().hex[:6]}", 50), warm)
        bench.drop(warm)
        for r in range(repeats):
            job_id = f"bench-{uuid.uuid4().hex[:8]}"  # one job id per repeat: identical bodies
            payload = request(job_id, tasks)
            order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
            bodies: dict[str, list[str]] = {}
            for name in order:
                settings = bench.fresh()
                elapsed, calls, extra = variants[name](payload, settings)
                queued = bench.queued(settings)
                if queued != tasks:
                    raise RuntimeError(f"{name}: {queued} messages on the queue, expected {tasks}")
                if verify and r == 0:
                    bodies[name] = bench.bodies(settings)
                bench.drop(settings)
                samples[name].append(
                    {
                        "repeat": r,
                        "position": order.index(name),
                        "elapsed_s": round(elapsed, 3),
                        "tasks_per_s": round(tasks / elapsed, 1),
                        "sqs_calls": calls,
                        "sqs_calls_per_task": round(calls / tasks, 4),
                        **extra,
                    }
                )
                print(
                    f"  repeat {r + 1}/{repeats} {name:<22} {elapsed:7.2f} s  "
                    f"{tasks / elapsed:8.0f} tasks/s  {calls / tasks:.3f} SQS calls/task",
                    flush=True,
                )
            if bodies:
                verified = len({tuple(b) for b in bodies.values()}) == 1
    summary: dict[str, dict[str, float]] = {}
    for name, got in samples.items():
        summary[name] = {
            "median_tasks_per_s": round(median([s["tasks_per_s"] for s in got]), 1),
            "median_elapsed_s": round(median([s["elapsed_s"] for s in got]), 3),
            "median_sqs_calls_per_task": round(median([s["sqs_calls_per_task"] for s in got]), 4),
            "median_first_quarter_tasks_per_s": round(
                median([s["first_quarter_tasks_per_s"] for s in got]), 1
            ),
            "median_last_quarter_tasks_per_s": round(median([s["last_quarter_tasks_per_s"] for s in got]), 1),
        }
    ratios = {
        name: round(
            median(
                [
                    e["tasks_per_s"] / b["tasks_per_s"]
                    for e, b in zip(samples[name], samples["naive"], strict=True)
                ]
            ),
            2,
        )
        for name in VARIANTS
    }
    engine_calls = summary["engine"]["median_sqs_calls_per_task"]
    return {
        "tasks": tasks,
        "repeats": repeats,
        "summary": summary,
        "speedup_vs_naive": ratios,
        "engine_calls_per_task_within_target": engine_calls <= CALLS_PER_TASK_TARGET,
        "calls_per_task_target": CALLS_PER_TASK_TARGET,
        "speedup_target": SPEEDUP_TARGET,
        "engine_speedup_within_target": ratios["engine"] >= SPEEDUP_TARGET,
        "bodies_identical_across_variants": verified,
        "samples": samples,
    }


def report(result: dict[str, Any]) -> None:
    print()
    print(
        f"Fan-out of {result['tasks']} tasks on the local cloud (ministack), "
        f"medians of {result['repeats']} alternating repeats"
    )
    rows = []
    for name, s in result["summary"].items():
        rows.append(
            [
                name,
                f"{s['median_tasks_per_s']:.0f}",
                f"{s['median_elapsed_s']:.2f}",
                f"{s['median_sqs_calls_per_task']:.3f}",
                f"{result['speedup_vs_naive'][name]:.2f}×",
                f"{s['median_first_quarter_tasks_per_s']:.0f}",
                f"{s['median_last_quarter_tasks_per_s']:.0f}",
            ]
        )
    print(
        table(
            [
                "variant",
                "tasks/s",
                "elapsed s",
                "SQS calls/task",
                "throughput vs naive",
                "tasks/s, first 25%",
                "tasks/s, last 25%",
            ],
            rows,
        )
    )
    ddb = median([s["dynamodb_calls"] for s in result["samples"]["engine"]])
    print(f"engine DynamoDB calls per submit (job record + cursor checkpoints): {ddb:.0f}")
    target = result["calls_per_task_target"]
    ok = "within" if result["engine_calls_per_task_within_target"] else "OVER"
    per_task = result["summary"]["engine"]["median_sqs_calls_per_task"]
    print(f"engine SQS calls per task: {per_task:.3f} ({ok} ≤ {target})")
    speedup = result["speedup_vs_naive"]["engine"]
    verdict = "meets" if result["engine_speedup_within_target"] else "BELOW"
    print(f"engine throughput vs naive: {speedup:.2f}× ({verdict} ≥ {result['speedup_target']:.0f}×)")
    if result["bodies_identical_across_variants"] is not None:
        print(
            f"same message bodies in every variant (repeat 1): {result['bodies_identical_across_variants']}"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per fan-out (default 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats (default 3)")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip reading the queues back to compare bodies (repeat 1)"
    )
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.repeats < 1:
        parser.error("--tasks and --repeats must be at least 1")
    result = {**run(args.tasks, args.repeats, verify=not args.no_verify), "machine": machine()}
    print(describe(result["machine"]))
    report(result)
    emit_json("fanout", result)
    return result


if __name__ == "__main__":
    main()
