"""Aggregation: results/s through the aggregator handler and DynamoDB writes per result, vs naive.

On one local cloud (``LocalCloud``), per variant: a fresh set of queues, table and bucket;
a data-parallel job of ``--results`` shards submitted through ``Engine.submit``; every
task received and answered with a succeeded result on the (standard) results queue, as
workers do. None of that is timed. Then the timed part drains the results queue the way
the event source mapping does (``tests.helpers.run_event_source``: receive up to the
batch size, build the real SQS event shape from the received messages, invoke, delete
what succeeded) until it is empty:

* ``shardq, batch 100``: ``lambdas.aggregator.aggregate`` (the handler body without the
  Powertools decorators) with the stack's batch size (100);
* ``shardq, batch 10``: the same with batches of 10 (what a FIFO source would allow);
* ``naive, batch 100``: a handler that writes each result on its own (conditional
  ``PutItem``) plus its own counter ``UpdateItem``, then advances the job once per batch
  like the real one, so only the recording differs.

The DynamoDB client of each variant is wrapped in ``tests.helpers.CountingClient`` (API
calls per operation) over a tally of what DynamoDB bills: a transaction of k items is k
write requests at 2 WRU per KB-rounded item; a plain write is 1 WRU per KB-rounded item
(an update is billed on the job item's size, measured at the end). Item sizes follow
DynamoDB's rule (attribute names plus values, UTF-8).

    .venv/bin/python -m benchmarks.aggregation [--results 2000] [--repeats 1]
"""

from __future__ import annotations

import argparse
import math
import os
import time
import uuid
from typing import Any

from benchmarks._common import describe, emit_json, machine, median, table
from benchmarks.fanout import request
from shardq.core.contracts import ShardResult
from shardq.core.engine import Engine

# The naive baseline writes the table itself, on purpose: it needs the store's private key builder.
from shardq.core.jobstore import Outcome, now_iso
from shardq.core.settings import Settings
from shardq.core.store.keys import job_key
from shardq.local.cloud import LocalCloud
from shardq.local.resources import provision
from tests.helpers import (
    CountingClient,
    count_messages,
    post_results,
    receive_all,
    result_for,
    run_event_source,
    tasks_of,
)

TARGET_WRITES_PER_RESULT = 1.2
WRITE_OPS = ("transact_write_items", "put_item", "update_item", "delete_item", "batch_write_item")


def item_bytes(item: dict[str, Any]) -> int:
    """DynamoDB's size of an item in wire format: names plus values (close enough for billing)."""
    size = 0
    for name, value in item.items():
        size += len(name.encode())
        ((kind, v),) = value.items()
        if kind in ("S", "N", "B"):
            size += len(str(v).encode())
        elif kind in ("BOOL", "NULL"):
            size += 1
        elif kind == "M":
            size += 3 + item_bytes(v)
        elif kind == "L":
            size += 3 + sum(item_bytes({"": x}) for x in v)
        else:
            size += len(str(v).encode())
    return size


class Billing:
    """Tallies DynamoDB write requests and WRUs on a client (nothing else changes)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.exceptions = real.exceptions
        self.write_requests = 0
        self.item_sizes: list[tuple[str, int]] = []  # ("txn" | "plain" | "update", bytes or -1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def transact_write_items(self, **kwargs: Any) -> Any:
        for action in kwargs["TransactItems"]:
            ((kind, body),) = action.items()
            self.write_requests += 1
            self.item_sizes.append(("txn", item_bytes(body["Item"]) if kind == "Put" else -1))
        return self.real.transact_write_items(**kwargs)

    def put_item(self, **kwargs: Any) -> Any:
        self.write_requests += 1
        self.item_sizes.append(("plain", item_bytes(kwargs["Item"])))
        return self.real.put_item(**kwargs)

    def update_item(self, **kwargs: Any) -> Any:
        self.write_requests += 1
        self.item_sizes.append(("plain", -1))
        return self.real.update_item(**kwargs)

    def wru(self, job_item_bytes: int) -> int:
        """Write capacity units billed: -1 sizes (updates) are the job item's size."""
        total = 0
        for kind, size in self.item_sizes:
            units = math.ceil((job_item_bytes if size < 0 else size) / 1024) or 1
            total += units * (2 if kind == "txn" else 1)
        return total


def naive_handler(engine: Engine) -> Any:
    """One conditional PutItem per result plus one counter UpdateItem per result; advance per batch."""
    ddb, table_name = engine.ddb, engine.settings.job_table

    def handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
        jobs = set()
        for record in event["Records"]:
            outcome = Outcome(result=ShardResult.from_json(record["body"]))
            try:
                ddb.put_item(
                    TableName=table_name,
                    Item=outcome.item(now_iso()),
                    ConditionExpression="attribute_not_exists(pk)",
                )
            except ddb.exceptions.ConditionalCheckFailedException:
                continue  # a duplicate: already counted
            ddb.update_item(
                TableName=table_name,
                Key=job_key(outcome.result.job_id),
                UpdateExpression="ADD #c :one",
                ExpressionAttributeNames={"#c": outcome.phase_counter},
                ExpressionAttributeValues={":one": {"N": "1"}},
            )
            jobs.add(outcome.result.job_id)
        for job_id in jobs:
            engine.advance(job_id)
        return {"batchItemFailures": []}

    return handle


def event_source(sqs: Any, url: str, handler: Any, batch: int) -> list[dict[str, Any]]:
    """What an event source mapping does (``tests.helpers.run_event_source``): gather, invoke, delete."""
    return list(run_event_source(sqs, url, handler, batch=batch))


class Bench:
    def __init__(self, cloud: LocalCloud) -> None:
        self.cloud = cloud
        self.sqs = cloud.client("sqs")
        self.ddb = cloud.client("dynamodb")
        self.s3 = cloud.client("s3")
        self.events = cloud.client("events")

    def prepare(self, results: int) -> tuple[Settings, str]:
        """Fresh resources, a job of ``results`` shards, and its results waiting on the results queue."""
        settings = provision(self.sqs, self.ddb, self.s3)
        engine = Engine(settings=settings, ddb=self.ddb, sqs=self.sqs, s3=self.s3, events=self.events)
        job_id = f"agg-{uuid.uuid4().hex[:8]}"
        engine.submit(request(job_id, results, "data_parallel"))
        tasks = tasks_of(receive_all(self.sqs, settings.task_queue_url, attributes=False))
        assert len(tasks) == results, len(tasks)
        post_results(self.sqs, settings.results_queue_url, [result_for(t) for t in tasks])
        return settings, job_id

    def measure(self, variant: str, results: int) -> dict[str, Any]:
        from lambdas import aggregator, common
        from shardq.core.clients import client

        settings, job_id = self.prepare(results)
        os.environ.update({**self.cloud.env(), **settings.as_env(), "POWERTOOLS_TRACE_DISABLED": "true"})
        common.engine.cache_clear()
        client.cache_clear()
        engine = common.engine()
        billing = Billing(engine.ddb)
        ddb = CountingClient(billing)
        engine.ddb = ddb
        engine.store.ddb = ddb
        batch = 10 if variant == "shardq, batch 10" else 100
        handler = naive_handler(engine) if variant.startswith("naive") else aggregator.aggregate
        started = time.perf_counter()
        invocations = 0
        failures = 0
        while True:
            responses = event_source(self.sqs, settings.results_queue_url, handler, batch)
            invocations += len(responses)
            failures += sum(len(r.get("batchItemFailures", [])) for r in responses)
            if not responses or count_messages(self.sqs, settings.results_queue_url) == 0:
                break
        elapsed = time.perf_counter() - started
        if failures:
            raise RuntimeError(f"{variant}: {failures} batch item failures")
        job = engine.store.get_job(job_id)
        recorded = job.ok(0, "train")
        stored = len(engine.store.results(job_id, 0))
        if recorded != results or stored != results:
            raise RuntimeError(f"{variant}: counter {recorded}, result items {stored}, expected {results}")
        raw = self.ddb.get_item(TableName=settings.job_table, Key=job_key(job_id))["Item"]
        job_bytes = item_bytes(raw)
        writes = {k: v for k, v in ddb.counts.items() if k in WRITE_OPS}
        reads = {k: v for k, v in ddb.counts.items() if k not in WRITE_OPS}
        common.engine.cache_clear()
        client.cache_clear()
        return {
            "variant": variant,
            "results": results,
            "batch_size": batch,
            "elapsed_s": round(elapsed, 3),
            "results_per_s": round(results / elapsed, 1),
            "invocations": invocations,
            "invocations_per_result": round(invocations / results, 4),
            "write_requests": billing.write_requests,
            "write_requests_per_result": round(billing.write_requests / results, 4),
            "wru": billing.wru(job_bytes),
            "wru_per_result": round(billing.wru(job_bytes) / results, 4),
            "write_calls": writes,
            "write_calls_per_result": round(sum(writes.values()) / results, 4),
            "read_calls": reads,
            "job_item_bytes": job_bytes,
            "result_item_bytes": median([s for k, s in billing.item_sizes if s > 0] or [0]),
            "job_status": job.status,
        }


VARIANTS = ("shardq, batch 100", "naive, batch 100", "shardq, batch 10")


def run(results: int, repeats: int) -> dict[str, Any]:
    samples: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with LocalCloud() as cloud:
        bench = Bench(cloud)
        bench.measure("shardq, batch 100", 50)  # warm-up, discarded
        for r in range(repeats):
            order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
            for name in order:
                s = bench.measure(name, results)
                samples[name].append(s)
                print(
                    f"  repeat {r + 1}/{repeats} {name:<18} {s['results_per_s']:7.0f} results/s  "
                    f"{s['write_requests_per_result']:.3f} write requests/result  "
                    f"{s['invocations']} invocations",
                    flush=True,
                )
    summary = {}
    for name, got in samples.items():
        summary[name] = {
            k: median([g[k] for g in got])
            for k in (
                "results_per_s",
                "invocations_per_result",
                "write_requests_per_result",
                "wru_per_result",
                "write_calls_per_result",
            )
        }
    base = samples["naive, batch 100"]
    for name in VARIANTS:
        summary[name]["throughput_vs_naive"] = round(
            median(
                [a["results_per_s"] / b["results_per_s"] for a, b in zip(samples[name], base, strict=True)]
            ),
            2,
        )
        summary[name]["write_requests_vs_naive"] = round(
            median(
                [
                    a["write_requests_per_result"] / b["write_requests_per_result"]
                    for a, b in zip(samples[name], base, strict=True)
                ]
            ),
            3,
        )
    main_wr = summary["shardq, batch 100"]["write_requests_per_result"]
    return {
        "results": results,
        "repeats": repeats,
        "target_write_requests_per_result": TARGET_WRITES_PER_RESULT,
        "within_target": main_wr <= TARGET_WRITES_PER_RESULT,
        "summary": summary,
        "samples": samples,
    }


def report(result: dict[str, Any]) -> None:
    print()
    print(
        f"Aggregation of {result['results']} results on the local cloud, "
        f"medians of {result['repeats']} repeat(s)"
    )
    rows = []
    for name, s in result["summary"].items():
        sample = result["samples"][name][0]
        rows.append(
            [
                name,
                f"{s['results_per_s']:.0f}",
                f"{s['throughput_vs_naive']:.2f}×",
                f"{s['invocations_per_result']:.3f}",
                f"{s['write_requests_per_result']:.3f}",
                f"{s['wru_per_result']:.2f}",
                f"{s['write_calls_per_result']:.3f}",
                ", ".join(f"{k} {v}" for k, v in sorted(sample["write_calls"].items())),
            ]
        )
    print(
        table(
            [
                "variant",
                "results/s",
                "vs naive",
                "invocations/result",
                "write requests/result",
                "WRU/result",
                "write calls/result",
                "write calls (repeat 1)",
            ],
            rows,
        )
    )
    wr = result["summary"]["shardq, batch 100"]["write_requests_per_result"]
    ok = "within" if result["within_target"] else "OVER"
    print(
        f"shardq (batch 100): {wr:.3f} DynamoDB write requests per result ({ok} ≤ {TARGET_WRITES_PER_RESULT})"
    )
    s = result["samples"]["shardq, batch 100"][0]
    print(
        f"result item ≈ {s['result_item_bytes']} B, job item ≈ {s['job_item_bytes']} B; "
        f"reads (repeat 1): {s['read_calls']}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=2000, help="results per variant (default 2000)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating repeats (default 1)")
    args = parser.parse_args(argv)
    if args.results < 1 or args.repeats < 1:
        parser.error("--results and --repeats must be at least 1")
    result = {**run(args.results, args.repeats), "machine": machine()}
    print(describe(result["machine"]))
    report(result)
    emit_json("aggregation", result)
    return result


if __name__ == "__main__":
    main()
