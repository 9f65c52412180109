"""DynamoDB read units one refresh of ``watch`` and of the dashboard costs, at 1k, 10k and 100k shards.

On the local cloud (freshly provisioned table, the stack's own indexes), a ``map`` job of N shards
is created and N - 100 outcomes are recorded through ``JobStore.record`` (the aggregator's
transactions; one in 100 failed), so the round is running, and recorded more than a read's
overlap ago. Then, for each reader, a first refresh (the catch-up, reported apart), 20 more
outcomes (one failed), and the measured refresh:

* ``watch``: ``store.get_job`` + ``Watch.observe`` (the CLI's own poll: counters, failures,
  stall); before this change it read the job's failed outcomes in full whenever the failure
  count rose (``store.failed_results``: a filtered query over every result item);
* ``dashboard``: ``DashboardData.job`` (the job API the page polls every 2 s); before, each
  refresh of a running round read the round's every result item and the round summaries
  (``store.results`` + ``store.round_summaries``, as ``dashboard/data.py`` did).

Every DynamoDB call goes through ``Meter``: it asks for ``ReturnConsumedCapacity=TOTAL`` and sums
what the endpoint reports, and it also computes what DynamoDB bills by its documented rules
(the local cloud reports a flat 1 or 0.5 per call whatever it read): a read is rounded up to
4 KB of the items it *evaluated* (before a filter: a filtered query is re-read unfiltered,
unmetered, to size them), 1 unit per 4 KB strongly consistent, 0.5 eventually consistent (a GSI
query always), at least one 4 KB step per call.

    .venv/bin/python -m benchmarks.read_units [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse
import io
import math
import re
import time
from collections.abc import Mapping
from typing import Any

from benchmarks._common import describe, emit_json, machine, table
from shardq.cli.watch import Watch
from shardq.core.contracts import ShardResult, TrainingRequest
from shardq.core.engine import Engine
from shardq.core.jobstore import JobRecord, JobStore, Outcome
from shardq.core.progress_reads import OVERLAP_S, SKEW_S
from shardq.local.cloud import LocalCloud
from shardq.local.resources import provision

BATCH = 990
OPEN = 100  # shards left without an outcome: the round is running
NEW_PER_REFRESH = 20  # outcomes recorded between two refreshes (one of them failed)
READS = ("get_item", "query", "batch_get_item", "scan")


def attribute_size(value: Mapping[str, Any]) -> int:
    """Bytes DynamoDB counts for one attribute value (its documented item-size rules)."""
    (kind, v), *_ = value.items()
    if kind in ("S", "B"):
        return len(v.encode() if isinstance(v, str) else v)
    if kind == "N":
        return math.ceil(len(v.lstrip("-").replace(".", "").lstrip("0") or "0") / 2) + 1
    if kind in ("BOOL", "NULL"):
        return 1
    if kind in ("SS", "BS"):
        return sum(len(x.encode() if isinstance(x, str) else x) for x in v)
    if kind == "NS":
        return sum(math.ceil(len(x) / 2) + 1 for x in v)
    if kind == "L":
        return 3 + sum(1 + attribute_size(x) for x in v)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + attribute_size(x) for k, x in v.items())
    raise ValueError(f"unknown attribute type {kind}")


def item_size(item: Mapping[str, Any]) -> int:
    """Bytes of an item: each attribute's name plus its value."""
    return sum(len(name.encode()) + attribute_size(value) for name, value in item.items())


def units(size: int, consistent: bool) -> float:
    """Read units of ``size`` bytes in one call: 4 KB steps, at least one."""
    steps = max(1, math.ceil(size / 4096))
    return steps * (1.0 if consistent else 0.5)


class Meter:
    """A DynamoDB client that sums read units (reported and by DynamoDB's rules) per operation."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.exceptions = real.exceptions
        self.reset()

    def reset(self) -> None:
        """Start a new measurement."""
        self.calls = 0
        self.items = 0
        self.bytes = 0
        self.billed = 0.0
        self.reported = 0.0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if name not in READS:
            return attr

        def call(**kwargs: Any) -> Any:
            answer = attr(**kwargs, ReturnConsumedCapacity="TOTAL")
            self.calls += 1
            for used in _capacities(answer):
                self.reported += float(used.get("CapacityUnits", 0.0))
            size, count, consistent = self._evaluated(name, kwargs, answer)
            self.items += count
            self.bytes += size
            self.billed += units(size, consistent)
            return answer

        return call

    def _evaluated(self, name: str, kwargs: dict[str, Any], answer: dict[str, Any]) -> tuple[int, int, bool]:
        """Bytes and items the call evaluated, and whether it read strongly consistently."""
        consistent = bool(kwargs.get("ConsistentRead")) and not kwargs.get("IndexName")
        if name == "get_item":
            item = answer.get("Item") or {}
            return item_size(item), 1 if item else 0, consistent
        if name == "batch_get_item":
            found = [i for items in answer.get("Responses", {}).values() for i in items]
            specs = list(kwargs["RequestItems"].values())
            return (
                sum(item_size(i) for i in found),
                len(found),
                bool(specs and specs[0].get("ConsistentRead")),
            )
        items = answer.get("Items", [])
        if kwargs.get("FilterExpression"):
            # What the filter dropped was read (and billed) too: size the same page unfiltered.
            items = self.real.query(**_unfiltered(kwargs)).get("Items", [])
        return sum(item_size(i) for i in items), len(items), consistent


def _capacities(answer: dict[str, Any]) -> list[dict[str, Any]]:
    used = answer.get("ConsumedCapacity")
    if used is None:
        return []
    return list(used) if isinstance(used, list) else [used]


def _unfiltered(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The query without its filter (and the values only the filter used), for the same page."""
    out = {k: v for k, v in kwargs.items() if k != "FilterExpression"}
    keys = out["KeyConditionExpression"]
    out["ExpressionAttributeValues"] = {
        k: v for k, v in out["ExpressionAttributeValues"].items() if re.search(re.escape(k) + r"\b", keys)
    }
    return out


def outcome(job_id: str, shard: int, failed: bool | None = None) -> Outcome:
    """A recorded outcome of one shard: one in 100 failed (or as ``failed`` says), with its error."""
    failed = shard % 100 == 7 if failed is None else failed
    return Outcome(
        ShardResult(
            job_id=job_id, round=0, shard_id=shard, task_type="train",
            status="failed" if failed else "succeeded",
            metrics={} if failed else {"score": 1.0, "loss": 0.25}, num_samples=0 if failed else 100,
            artifact_uri=None if failed else f"s3://bench/jobs/{job_id}/round-0000/shard-{shard:06d}/",
            duration_s=12.5, worker_id=f"worker-{shard % 16}",
            error="CUDA out of memory" if failed else None,
        )
    )  # fmt: skip


def fill(store: JobStore, job_id: str, shards: range) -> None:
    """Record the outcomes of ``shards`` the way the aggregator does (99 per transaction)."""
    todo = list(shards)
    for lo in range(0, len(todo), BATCH):
        store.record([outcome(job_id, s) for s in todo[lo : lo + BATCH]])


def arrive(store: JobStore, job_id: str, first: int) -> None:
    """The outcomes recorded between two refreshes: ``NEW_PER_REFRESH`` shards, the first failed."""
    store.record([outcome(job_id, s, failed=s == first) for s in range(first, first + NEW_PER_REFRESH)])


def measure(meter: Meter, refresh: Any) -> dict[str, Any]:
    """One refresh's read calls, items, bytes and read units (billed rules; endpoint-reported)."""
    meter.reset()
    started = time.perf_counter()
    refresh()
    return {
        "calls": meter.calls,
        "items": meter.items,
        "kib": round(meter.bytes / 1024, 1),
        "rcu": round(meter.billed, 1),
        "rcu_reported": round(meter.reported, 1),
        "seconds": round(time.perf_counter() - started, 3),
    }


def run_size(cloud: LocalCloud, shards: int) -> dict[str, Any]:
    """Every reader's first and steady refresh over one job of ``shards`` shards."""
    from shardq.dashboard.data import DashboardData

    clients = {n: cloud.client(n) for n in ("sqs", "dynamodb", "s3", "events")}
    settings = provision(clients["sqs"], clients["dynamodb"], clients["s3"])
    meter = Meter(clients["dynamodb"])
    engine = Engine(
        settings=settings, ddb=meter, sqs=clients["sqs"], s3=clients["s3"], events=clients["events"]
    )
    job_id = f"reads-{shards}"
    request = TrainingRequest.from_dict(
        {"job_id": job_id, "kind": "map", "dataset": {"num_samples": shards * 100},
         "sharding": {"shard_count": shards}, "max_failed_shards": shards,
         "entrypoint": "benchmarks.e2e:noop"}
    )  # fmt: skip
    engine.store.create_job(JobRecord.new(request, job_id, "x"))
    started = time.perf_counter()
    recorded = shards - OPEN - 2 * NEW_PER_REFRESH
    fill(engine.store, job_id, range(recorded))
    fill_s = time.perf_counter() - started
    store = engine.store
    watch = Watch(engine=engine, job_id=job_id, out=io.StringIO(), json_lines=True)
    dashboard = DashboardData(store=store, sqs=clients["sqs"], s3=clients["s3"], queues={})

    def watch_now() -> None:
        watch.observe(store.get_job(job_id))

    def watch_before() -> None:
        store.get_job(job_id)
        store.failed_results(job_id)

    def dashboard_before() -> None:
        store.get_job(job_id)
        store.results(job_id, 0, "train")
        store.round_summaries(job_id)

    readers = {
        "watch": watch_now,
        "watch, before": watch_before,
        "dashboard": lambda: dashboard.job(job_id),
        "dashboard, before": dashboard_before,
    }
    # The job has been running a while: its outcomes so far were recorded longer ago than a read's
    # overlap reaches (shardq.core.progress_reads), as they are after the first minute of a job.
    time.sleep(OVERLAP_S + SKEW_S + 1)
    first = {name: measure(meter, fn) for name, fn in readers.items()}
    steady: dict[str, Any] = {}
    for i, (name, fn) in enumerate(readers.items()):
        if i % 2 == 0:  # new outcomes (one failed) before a reader; its "before" reads the same
            arrive(store, job_id, recorded + (i // 2) * NEW_PER_REFRESH)
        steady[name] = measure(meter, fn)
    return {"shards": shards, "recorded": recorded + 2 * NEW_PER_REFRESH, "fill_s": round(fill_s, 1),
            "first": first, "steady": steady}  # fmt: skip


def run(sizes: list[int]) -> dict[str, Any]:
    """Each size in its own freshly provisioned table on one local cloud."""
    with LocalCloud() as cloud:
        return {"sizes": [run_size(cloud, n) for n in sizes]}


def report(result: dict[str, Any]) -> None:
    """The table BENCHMARKS.md shows: read units of one steady refresh per reader and size."""
    rows = []
    for size in result["sizes"]:
        for name, m in size["steady"].items():
            f = size["first"][name]
            rows.append((f"{size['shards']:,}", name, m["calls"], m["items"], m["kib"], m["rcu"],
                         m["rcu_reported"], f["rcu"]))  # fmt: skip
    heads = ["shards", "reader", "calls", "items read", "KiB read", "RCU (billed rules)", "RCU (endpoint)",
             "first refresh RCU"]  # fmt: skip
    print(table(heads, rows))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the sizes, print the table, emit the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated shard counts")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) <= OPEN + 2 * NEW_PER_REFRESH:
        parser.error(f"--sizes: each size must be above {OPEN + 2 * NEW_PER_REFRESH} shards")
    result = {**run(sizes), "machine": machine()}
    print(describe(result["machine"]))
    report(result)
    emit_json("read_units", result)
    return result


if __name__ == "__main__":
    main()
