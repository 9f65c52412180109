"""A FedAvg round's coordination latency on AWS, from the stack's settings and per-hop figures.

A round's critical path, with the training and the reduce's own work left out:

1. the round's closing train result → the aggregator (an SQS event source: its batching window, then
   the standard-queue hop);
2. the aggregator records it, closes the round and sends the reduce task;
3. the reduce task → a long-polling worker (the FIFO task queue);
4. the reduce's result → the aggregator (the event source again);
5. the aggregator records it and sends the next round's tasks;
6. the next round's task → a worker (FIFO again).

Which results queue steps 1 and 4 take is ``shardq.core.result_routes.route_of``; each queue's
batch size and window come from the stack: its synthesized template (``paths_from_template``, the
event source mappings as deployed) or its cdk.json context (``paths_from_context``).

A message that arrives alone waits out the whole window: AWS's poller invokes the function when the
window ends, the batch is full or the payload reaches 6 MB. A reduce's result is always alone, and
a round's last train result usually is (results spread over more than the window), so the model
charges the full window: the round's p50 is what an operator sees, not a best case.

Per-hop figures: SQS standard → Lambda p50 16 ms / p99 105 ms and SQS FIFO → Lambda p50 28 ms /
p99 645 ms (Bite-Sized Serverless, 2022, as issue #27 cites them). The FIFO figure stands in for a
long-polling worker's receive, the closest measured figure for a FIFO message reaching a waiting
consumer. The aggregator's steps are an assumption, printed as one: a warm invocation making its
step's sequential DynamoDB, S3 and SQS calls at p50 6 / p99 25 ms each (7 in a row counted for a
2-shard round's close, 5 for the step after a reduce: ``benchmarks/round_calls.py``). Each hop is
a lognormal through its p50 and p99; the round's p50 and p99 come from ``SAMPLES`` seeded draws of
their sum (deterministic output), and ``p99_bound`` is the plain sum of the p99s (every hop at its
worst at once).

Pure standard library: the core ships in the Lambda asset, which carries no numpy.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from shardq.core import cost
from shardq.core.result_routes import FAST_BATCH_SIZE, FAST_BATCH_WINDOW_SECONDS, Route, route_of

SAMPLES = 20_000
SEED = 27
_Z99 = 2.3263478740408408  # the standard normal's 99th percentile
# Logical ids of the results queues (pinned by the stack: stacks/shardq_stack.py PINNED_LOGICAL_IDS).
BULK_QUEUE_ID, FAST_QUEUE_ID = "ResultsQueue", "FastResultsQueue"
# The stack's default bulk source (stacks/shardq_stack.py RESULTS_BATCH_SIZE; cdk.json's window).
BULK_BATCH_SIZE, DEFAULT_WINDOW_S = 100, 5.0


@dataclass(frozen=True)
class Hop:
    """One step of the critical path: its p50 and p99 in seconds, and where the figures come from."""

    name: str
    p50_s: float
    p99_s: float
    source: str

    def draw(self, rng: random.Random) -> float:
        """One lognormal draw through (p50, p99); a fixed delay when they are equal."""
        if self.p99_s <= self.p50_s:
            return self.p50_s
        sigma = (math.log(self.p99_s) - math.log(self.p50_s)) / _Z99
        return rng.lognormvariate(math.log(self.p50_s), sigma)


CITED = "Bite-Sized Serverless 2022 (issue #27)"
SQS_STANDARD_TO_LAMBDA = Hop("SQS standard → Lambda event source", 0.016, 0.105, CITED)
SQS_FIFO_TO_WORKER = Hop(
    "task (FIFO) → long-polling worker", 0.028, 0.645, CITED + ", FIFO → Lambda as proxy"
)
# One DynamoDB, S3 or SQS call of a warm invocation in its region: p50 6 ms / p99 25 ms (an
# assumption, printed as one). An aggregator step is its sequential calls (calls side by side count
# once), counted on a 2-shard round by benchmarks/round_calls.py (BENCHMARKS.md §14): the close
# (record, read the job, claim+freeze, read the results, summary ∥ reduce inputs → send, move) and
# the step after the reduce (record, read the job, send ∥ summary read+write, move). Before the
# calls were cut they were 11 and 10 in a row.
CALL_P50_S, CALL_P99_S = 0.006, 0.025
CLOSE_STEP_CALLS, REDUCE_STEP_CALLS = 7, 5


def aggregator_step(what: str, calls: int) -> Hop:
    """An aggregator step of ``calls`` sequential calls: the per-call p50 and p99 times ``calls``
    (the p99 as if every call were at its worst at once: an upper bound)."""
    return Hop(
        f"aggregator step: {what}",
        round(calls * CALL_P50_S, 6),
        round(calls * CALL_P99_S, 6),
        f"assumption: {calls} sequential DynamoDB/S3/SQS calls of a warm invocation at p50 "
        f"{CALL_P50_S * 1000:.0f} / p99 {CALL_P99_S * 1000:.0f} ms each (counted: BENCHMARKS.md §14)",
    )


CLOSE_STEP = aggregator_step("record, close the round, send the reduce", CLOSE_STEP_CALLS)
REDUCE_STEP = aggregator_step("record the reduce, send the next round", REDUCE_STEP_CALLS)


@dataclass(frozen=True)
class ResultsPath:
    """One results queue's event source: records per batch and the batching window."""

    batch_size: int
    window_s: float


@dataclass(frozen=True)
class StackPaths:
    """The stack's results paths; ``fast`` is None for a stack without the fast queue."""

    bulk: ResultsPath
    fast: ResultsPath | None
    source: str

    def without_fast(self) -> StackPaths:
        """The same stack as it was before the fast queue (every result on the bulk path)."""
        return StackPaths(bulk=self.bulk, fast=None, source=self.source + ", without the fast queue")


def paths_from_context(context: Mapping[str, Any]) -> StackPaths:
    """The paths a deploy with this cdk.json context creates (the fast queue is always there)."""
    window = float(context.get("results_batch_window_seconds", DEFAULT_WINDOW_S))
    return StackPaths(
        bulk=ResultsPath(BULK_BATCH_SIZE, window),
        fast=ResultsPath(FAST_BATCH_SIZE, float(FAST_BATCH_WINDOW_SECONDS)),
        source="cdk.json context",
    )


def paths_from_template(template: Mapping[str, Any]) -> StackPaths:
    """The paths in a synthesized template: its event source mappings on the results queues.

    Raises ``ValueError`` naming the fix when the template has no mapping on the results queue.
    """
    found: dict[str, ResultsPath] = {}
    for resource in template.get("Resources", {}).values():
        if resource.get("Type") != "AWS::Lambda::EventSourceMapping":
            continue
        props = resource.get("Properties", {})
        arn = props.get("EventSourceArn")
        queue = arn.get("Fn::GetAtt", [None])[0] if isinstance(arn, dict) else None
        if queue in (BULK_QUEUE_ID, FAST_QUEUE_ID):
            found[queue] = ResultsPath(
                int(props.get("BatchSize", 10)), float(props.get("MaximumBatchingWindowInSeconds", 0))
            )
    if BULK_QUEUE_ID not in found:
        raise ValueError(
            f"the template has no event source mapping on {BULK_QUEUE_ID}: pass a shardq stack's "
            "template (cdk synth writes cdk.out/shardq.template.json)"
        )
    return StackPaths(bulk=found[BULK_QUEUE_ID], fast=found.get(FAST_QUEUE_ID), source="synthesized template")


@dataclass(frozen=True)
class _Task:
    task_type: str
    shard_count: int


def route(paths: StackPaths, task_type: str, shards: int) -> Route:
    """The path a result takes on this stack: the rule's, where the stack has a fast queue."""
    return route_of(_Task(task_type, shards)) if paths.fast is not None else "bulk"


def _result_hop(paths: StackPaths, what: str, r: Route) -> list[Hop]:
    path = paths.fast if r == "fast" and paths.fast is not None else paths.bulk
    hop = SQS_STANDARD_TO_LAMBDA
    hops = [Hop(f"{what} → aggregator ({r} queue)", hop.p50_s, hop.p99_s, hop.source)]
    if path.window_s > 0:
        window = f"{r} source's batching window, waited out by a lone message"
        hops.insert(
            0, Hop(window, path.window_s, path.window_s, "the stack's MaximumBatchingWindowInSeconds")
        )
    return hops


def critical_path(paths: StackPaths, shards: int) -> list[Hop]:
    """The hops of one round of ``shards`` train tasks and one reduce, in order."""
    return [
        *_result_hop(paths, "round's last train result", route(paths, "train", shards)),
        CLOSE_STEP,
        SQS_FIFO_TO_WORKER,
        *_result_hop(paths, "reduce result", route(paths, "reduce", shards)),
        REDUCE_STEP,
        SQS_FIFO_TO_WORKER,
    ]


def _quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def round_latency(
    paths: StackPaths, shards: int, *, samples: int = SAMPLES, seed: int = SEED
) -> dict[str, Any]:
    """A round's modelled coordination p50 and p99 (seconds), its hops and the routes taken."""
    hops = critical_path(paths, shards)
    rng = random.Random(seed)
    sums = sorted(sum(h.draw(rng) for h in hops) for _ in range(samples))
    return {
        "shards": shards,
        "routes": {"train": route(paths, "train", shards), "reduce": route(paths, "reduce", shards)},
        "p50_s": round(_quantile(sums, 0.50), 3),
        "p99_s": round(_quantile(sums, 0.99), 3),
        "p99_bound_s": round(sum(h.p99_s for h in hops), 3),
        "hops": [asdict(h) for h in hops],
    }


def cost_per_result(paths: StackPaths, shards: int) -> dict[str, Any]:
    """Aggregator invocations and DynamoDB write units per result of one round, bulk vs fast path.

    Each path at its worst and best batching: a result alone in its batch (results trickle in), and
    full batches (a flood: ``min(shards, batch size)`` per invocation). Write units come from
    ``cost.dynamodb_units``: a result's own item (and its index entry), plus its share of its batch's
    counter transaction on the job record (and that record's index entry); the job's fixed writes
    (transitions, summaries) are left out, as they do not depend on the path.
    """
    job = cost.JobShape(kind="map", tasks_per_round=shards, rounds=1)
    twice = cost.JobShape(kind="map", tasks_per_round=2 * shards, rounds=1)
    none = cost.dynamodb_units(job, [])["write_request_units"]
    own = (cost.dynamodb_units(twice, [])["write_request_units"] - none) / shards
    out: dict[str, Any] = {}
    candidates = {"bulk": paths.bulk, **({"fast": paths.fast} if paths.fast else {})}
    for name, path in candidates.items():
        rows = {}
        for case, per_batch in (("alone", 1), ("full", min(shards, path.batch_size))):
            sizes = [per_batch] * (shards // per_batch) + ([shards % per_batch] if shards % per_batch else [])
            counters = cost.dynamodb_units(job, sizes)["write_request_units"] - none
            rows[case] = {
                "results_per_invocation": per_batch,
                "invocations_per_result": round(len(sizes) / shards, 4),
                "write_units_per_result": round(own + counters / shards, 2),
            }
        out[name] = rows
    return out


def report(paths: StackPaths, shards: int) -> dict[str, Any]:
    """Before (no fast queue) and after (this stack), and the cost side, for a round of ``shards``."""
    return {
        "source": paths.source,
        "paths": {
            "bulk": asdict(paths.bulk),
            "fast": asdict(paths.fast) if paths.fast else None,
        },
        "before": round_latency(paths.without_fast(), shards),
        "after": round_latency(paths, shards),
        "cost_per_result": cost_per_result(paths, shards),
    }
