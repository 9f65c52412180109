"""What a job costs in coordination, and how long the plane needs to dispatch and count it.

A count of API requests from how shardq works, priced at the list prices in ``prices.json``
(us-east-1, its sources and date inside). GPUs, data transfer, storage, logs and free tiers are
out of scope: coordination is the part shardq adds. The constants that decide the counts are
imported from the modules that use them (batch sizes, checkpoint interval, transaction size), so
the model follows the code.

Per job of R rounds of T train tasks on W workers, each task taking S seconds:

* Lanes: tasks go to ``max_parallel`` = L FIFO message groups and a group hands out one message
  at a time, so at most ``min(W, L)`` tasks run at once; workers beyond L only long-poll.
* Task queue (FIFO): the fan-out's SendMessageBatch calls; per task one receive, one delete and a
  heartbeat every visibility/3 seconds while it runs; idle long polls of workers with nothing to
  run (waiting for a round's last wave, or beyond the lanes).
* Results queue (standard): one send per task; the aggregator's event source receives and
  deletes in tens.
* Tasks run in waves of ``min(W, L)`` that finish together, so each wave's results reach the
  aggregator as batches of up to 100 (a lower bound on invocations).
* DynamoDB: each aggregator batch is recorded in transactions of up to 99 results plus the job's
  counter update (2 WRU per item per KB; the update is charged on the job record's size), and
  one write per result to the ``by_recorded`` index that watch and the dashboard read; cursor
  checkpoints, phase transitions, round summaries, finalize; each write of the job record again
  in the ``by_status`` index (it projects the whole record); reads of the job record.
* S3: one artifact PUT per train task, the reduce's inputs and output, the manifest; model GETs.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from shardq.core.advance import close_ranges
from shardq.core.contracts import DEFAULT_MAX_PARALLEL, max_round_tasks
from shardq.core.enqueue import CHUNK as CURSOR_CHUNK
from shardq.core.enqueue import HANDOFF_MARGIN_S
from shardq.core.fanout import MAX_BATCH_ENTRIES
from shardq.core.jobstore import MAX_PUTS_PER_TRANSACTION
from shardq.core.settings import Settings

PRICES_FILE = Path(__file__).with_name("prices.json")
# The stack's results event source batch size (stacks/shardq_stack.py RESULTS_BATCH_SIZE) and the
# worker's long poll (shardq/worker/runtime.py); the core may import neither, so
# tests/unit/test_cost.py checks that these copies agree with them.
AGGREGATOR_BATCH = 100
LONG_POLL_S = 20
RESULT_ITEM_KB = 1  # a result item (ShardResult JSON + keys) stays under 1 KB
# The job record: the request plus ≈ 700 bytes of status fields, plus ≈ 20 bytes per counter
# (ok/fail/enq per round and phase). Updates are charged on the record's size.
JOB_RECORD_BASE_BYTES = 700
COUNTER_BYTES = 20
# SendMessageBatch calls in flight during a fan-out: the splitter's setting for each queue mode.
FANOUT_IN_FLIGHT: int = Settings.__dataclass_fields__["fanout_in_flight"].default  # type: ignore[assignment]
FANOUT_IN_FLIGHT_HIGH_THROUGHPUT = (
    32  # what the stack sets with fifo_high_throughput (stacks/shardq_stack.py)
)


@cache
def price_book() -> dict[str, Any]:
    """``prices.json`` as stored: region, date, and each price and limit with its source."""
    data: dict[str, Any] = json.loads(PRICES_FILE.read_text(encoding="utf-8"))
    return data


def price(name: str) -> float:
    """One list price in USD (the unit is in its name)."""
    return float(price_book()["prices"][name]["value"])


def limit(name: str) -> float:
    """One published service limit."""
    return float(price_book()["limits"][name]["value"])


SHARDQ_PRICES = (
    "sqs_fifo_per_million_requests",
    "sqs_standard_per_million_requests",
    "lambda_per_million_requests",
    "lambda_arm64_per_gb_second",
    "dynamodb_per_million_write_request_units",
    "dynamodb_per_million_read_request_units",
    "s3_standard_per_thousand_put_requests",
    "s3_standard_per_thousand_get_requests",
    "eventbridge_per_million_events",
)


def shardq_prices() -> dict[str, float]:
    """The prices shardq's own requests are charged at, by name."""
    return {name: price(name) for name in SHARDQ_PRICES}


@dataclass(frozen=True)
class JobShape:
    """What the model needs to know about a job (from a request, or given directly)."""

    kind: str
    tasks_per_round: int
    rounds: int = 1
    max_parallel: int = DEFAULT_MAX_PARALLEL
    request_bytes: int = 600
    has_init_model: bool = False

    @classmethod
    def from_request(cls, request: Any) -> JobShape:
        """The shape of a validated ``TrainingRequest``."""
        return cls(
            kind=request.kind,
            tasks_per_round=request.task_count,
            rounds=request.rounds,
            max_parallel=request.max_parallel,
            request_bytes=len(request.to_json().encode()),
            has_init_model=bool(request.model.get("init_uri")),
        )

    @property
    def reduces(self) -> int:
        """Reduce tasks: one per round of a data_parallel job."""
        return self.rounds if self.kind == "data_parallel" else 0

    @property
    def tasks(self) -> int:
        """Every task of the job, train and reduce."""
        return self.rounds * self.tasks_per_round + self.reduces


@dataclass(frozen=True)
class Assumptions:
    """What the estimate assumes beyond the request; each is a command-line option."""

    workers: int = 10
    task_seconds: float = 60.0
    reduce_seconds: float = 10.0
    # The worker's task lease (shardq.worker.lease.DEFAULT_LEASE_S): a heartbeat every third of it.
    visibility_seconds: int = 30
    artifacts_per_task: int = 1
    splitter_ms: float = 300.0
    aggregator_ms: float = 200.0
    splitter_mb: int = 512
    aggregator_mb: int = 512
    high_throughput: bool = False
    # Round trip of one SendMessageBatch call (benchmarks/quota.py models 15-25 ms).
    sqs_call_ms: float = 20.0
    # The aggregator's event source concurrency (context aggregator_max_concurrency).
    aggregator_concurrency: int = 5
    # One TransactWriteItems on the job's counter item; transactions on one item do not overlap
    # (DynamoDB rejects a concurrent one with TransactionConflict), so this paces the counting.
    counter_transaction_ms: float = 25.0
    splitter_timeout_s: float = 120.0
    # Client CPU of one SendMessageBatch call, message building included: benchmarks/quota.py
    # measured 0.55 ms per call + 10 x 36 µs per message (BENCHMARKS.md, section 3; an x86 core;
    # a Lambda arm64 vCPU differs). 0: the splitter's CPU is not counted as a bound.
    splitter_cpu_ms_per_call: float = 0.9
    # Client CPU to read one result and write its manifest line when a round closes (paged query,
    # parse, JSON): BENCHMARKS.md, section 10 (231 µs on an x86 core).
    close_us_per_result: float = 231.0
    # The queue's SendMessageBatch quota, calls/s; None: the published one for the queue mode.
    quota_calls_per_second: float | None = None
    # Alternatives: states in a Distributed Map child workflow, and a Batch child's start overhead.
    sfn_states_per_child: int = 1
    batch_child_overhead_s: float = 30.0


def waves(tasks: int, slots: int) -> list[int]:
    """Sizes of the waves ``tasks`` run in on ``slots`` parallel slots."""
    full, rest = divmod(tasks, slots)
    return [slots] * full + ([rest] if rest else [])


def parallel_slots(job: JobShape, a: Assumptions) -> int:
    """Tasks of one job that can run at once: workers, capped by the job's FIFO lanes and its tasks."""
    return max(1, min(a.workers, job.max_parallel, job.tasks_per_round))


def round_wall_seconds(job: JobShape, a: Assumptions) -> float:
    """Training time of one round: waves of ``parallel_slots`` tasks, then the reduce."""
    slots = parallel_slots(job, a)
    return math.ceil(job.tasks_per_round / slots) * a.task_seconds + (
        a.reduce_seconds if job.reduces else 0.0
    )


def warnings(job: JobShape, a: Assumptions) -> list[str]:
    """What the user should know before sizing a fleet for this job."""
    out = []
    if a.workers > job.max_parallel:
        out.append(
            f"{a.workers} workers but max_parallel {job.max_parallel}: a FIFO lane runs one task at a time, "
            f"so at most {job.max_parallel} tasks run at once and {a.workers - job.max_parallel} workers "
            f"only long-poll; raise max_parallel or use {job.max_parallel} workers"
        )
    return out


def sqs_counts(job: JobShape, a: Assumptions) -> dict[str, int]:
    """Requests on the task queue (FIFO) and the results queue (standard)."""
    t, r, reduces, tasks = job.tasks_per_round, job.rounds, job.reduces, job.tasks
    fanout_calls = r * math.ceil(t / MAX_BATCH_ENTRIES) + reduces
    beat = max(0.5, a.visibility_seconds / 3)
    heartbeats = r * t * math.floor(a.task_seconds / beat) + reduces * math.floor(a.reduce_seconds / beat)
    busy = t * a.task_seconds + (a.reduce_seconds if job.reduces else 0.0)
    idle_polls = r * math.ceil(max(0.0, max(1, a.workers) * round_wall_seconds(job, a) - busy) / LONG_POLL_S)
    worker_receives = tasks + idle_polls
    round_waves = waves(t, parallel_slots(job, a))
    agg_polls = r * sum(math.ceil(n / MAX_BATCH_ENTRIES) for n in round_waves) + reduces
    return {
        "fanout_send_batch_calls": fanout_calls,
        "worker_receives": worker_receives,
        "worker_idle_polls": idle_polls,
        "worker_deletes": tasks,
        "heartbeats": heartbeats,
        "result_sends": tasks,
        "aggregator_receives": agg_polls,
        "aggregator_deletes": agg_polls,
        "task_queue_requests": fanout_calls + worker_receives + tasks + heartbeats,
        "results_queue_requests": tasks + 2 * agg_polls,
    }


def aggregator_batches(job: JobShape, a: Assumptions) -> list[int]:
    """Sizes of the aggregator's batches over the job (each wave in batches of up to 100)."""
    per_round = [
        min(AGGREGATOR_BATCH, n - i)
        for n in waves(job.tasks_per_round, parallel_slots(job, a))
        for i in range(0, n, AGGREGATOR_BATCH)
    ]
    return per_round * job.rounds + [1] * job.reduces


def dispatch_bounds(a: Assumptions) -> dict[str, float]:
    """SendMessageBatch calls/s one splitter invocation could sustain, under each bound.

    The queue's quota (300 calls/s, or the regional ceiling of high-throughput FIFO), what the
    fan-out's calls in flight offer (in flight / latency) and, when ``splitter_cpu_ms_per_call``
    is given, the splitter's CPU: its vCPU share (1,769 MB = 1 vCPU; one Python process uses at
    most one core) over the CPU one call takes.
    """
    quota = a.quota_calls_per_second or limit(
        "sqs_fifo_high_throughput_calls_per_second" if a.high_throughput else "sqs_fifo_calls_per_second"
    )
    in_flight = FANOUT_IN_FLIGHT_HIGH_THROUGHPUT if a.high_throughput else FANOUT_IN_FLIGHT
    bounds = {"queue quota": quota, f"{in_flight} calls in flight": in_flight / (a.sqs_call_ms / 1000)}
    if a.splitter_cpu_ms_per_call > 0:
        vcpu = min(1.0, a.splitter_mb / limit("lambda_mb_per_vcpu"))
        bounds[f"splitter CPU ({vcpu:.2f} vCPU)"] = vcpu / (a.splitter_cpu_ms_per_call / 1000)
    return bounds


def enqueue_seconds(tasks: int, a: Assumptions) -> float:
    """Lower bound on the time to put ``tasks`` on the task queue (``dispatch_bounds``' tightest)."""
    return math.ceil(tasks / MAX_BATCH_ENTRIES) / min(dispatch_bounds(a).values())


def lambda_usage(job: JobShape, a: Assumptions, batches: int) -> dict[str, float]:
    """Invocations and GB-seconds of the splitter and the aggregator."""
    enqueue_s = enqueue_seconds(job.tasks_per_round, a)
    # Next rounds are enqueued by the aggregator invocation that completes the reduce (or round).
    aggregator_s = batches * a.aggregator_ms / 1000 + (job.rounds - 1) * enqueue_s
    splitter_s = a.splitter_ms / 1000 + enqueue_s
    # A fan-out longer than one invocation allows continues in a fresh one (HANDOFF_MARGIN_S left).
    continuations = max(0, math.ceil(enqueue_s / max(1.0, a.splitter_timeout_s - HANDOFF_MARGIN_S)) - 1)
    # A map round over CLOSE_RANGE_SHARDS closes in ranges, one splitter invocation each, reading
    # its results once; a smaller round's close is in the aggregator's time per batch.
    ranges = close_ranges(job.kind, job.tasks_per_round)
    vcpu = min(1.0, a.splitter_mb / limit("lambda_mb_per_vcpu"))
    close_s = job.tasks_per_round * a.close_us_per_result / 1e6 / vcpu if ranges else 0.0
    return {
        "splitter_invocations": 1 + continuations,
        "close_range_invocations": ranges,
        "aggregator_invocations": batches,
        "invocations": 1 + continuations + ranges + batches,
        "gb_seconds": (splitter_s + close_s) * a.splitter_mb / 1024 + aggregator_s * a.aggregator_mb / 1024,
    }


def dynamodb_units(job: JobShape, batch_sizes: list[int]) -> dict[str, float]:
    """Write and read request units: results, counters, checkpoints, transitions, reads."""
    t, r, reduces, tasks = job.tasks_per_round, job.rounds, job.reduces, job.tasks
    phases = r * (2 if reduces else 1)
    job_bytes = job.request_bytes + JOB_RECORD_BASE_BYTES + COUNTER_BYTES * 3 * phases
    job_kb, job_4kb = math.ceil(job_bytes / 1024), math.ceil(job_bytes / 4096)
    # A batch is recorded in transactions of up to 99 results, each with the counter update.
    transactions = sum(math.ceil(n / MAX_PUTS_PER_TRANSACTION) for n in batch_sizes)
    wru_results = 2 * (tasks * RESULT_ITEM_KB + transactions * job_kb)
    # Each result item is also written to the sparse ``by_recorded`` index (its projection is
    # under 1 KB; an index write is a standard write, not a transactional one).
    wru_results += tasks
    cursor_updates = r * math.ceil(t / CURSOR_CHUNK) + reduces
    transitions = (2 * r if reduces else 0) + 3  # phase/round moves; finalize + event claim + clear
    # The job record carries ``status`` and ``created_at``, the keys of the ``by_status`` index
    # (projection ALL): each write of the record is written to that index too (a standard write of
    # the record's size), and the one status change (RUNNING to its end) moves the entry (+1).
    record_writes = 1 + transactions + cursor_updates + transitions
    wru_status_index = (record_writes + 1) * job_kb
    wru = job_kb + wru_results + (cursor_updates + transitions) * job_kb + r  # + round summaries
    wru += wru_status_index
    rru = (
        tasks * 0.5 * job_4kb  # workers' cancellation check (eventually consistent)
        + (len(batch_sizes) + phases) * job_4kb  # aggregator reads the record (consistent)
        + 2 * math.ceil(tasks * RESULT_ITEM_KB / 4)  # round completion + manifest queries
    )
    return {
        "job_record_bytes": job_bytes,
        "counter_transactions": transactions,
        "status_index_write_units": wru_status_index,
        "write_request_units": wru,
        "read_request_units": rru,
    }


def s3_requests(job: JobShape, a: Assumptions) -> dict[str, int]:
    """Artifact, reduce and manifest PUTs; model GETs (init model, later rounds, reduces)."""
    t, r, reduces = job.tasks_per_round, job.rounds, job.reduces
    puts = r * t * a.artifacts_per_task + 2 * reduces + 1
    gets = (t if job.has_init_model else 0) + (r - 1) * t + reduces * (t + 1)
    return {"put_requests": puts, "get_requests": gets}


def priced_lines(
    sqs: dict[str, int], lam: dict[str, float], ddb: dict[str, float], s3: dict[str, int]
) -> list[tuple[str, float, float]]:
    """(item, count, USD) for each billed dimension of shardq's coordination."""
    p = shardq_prices()
    tq, rq = sqs["task_queue_requests"], sqs["results_queue_requests"]
    wru, rru = ddb["write_request_units"], ddb["read_request_units"]
    return [
        ("SQS FIFO requests (task queue)", tq, tq * p["sqs_fifo_per_million_requests"] / 1e6),
        ("SQS standard requests (results queue)", rq, rq * p["sqs_standard_per_million_requests"] / 1e6),
        (
            "Lambda invocations",
            lam["invocations"],
            lam["invocations"] * p["lambda_per_million_requests"] / 1e6,
        ),
        ("Lambda GB-seconds (arm64)", lam["gb_seconds"], lam["gb_seconds"] * p["lambda_arm64_per_gb_second"]),
        ("DynamoDB write request units", wru, wru * p["dynamodb_per_million_write_request_units"] / 1e6),
        ("DynamoDB read request units", rru, rru * p["dynamodb_per_million_read_request_units"] / 1e6),
        (
            "S3 PUT requests",
            s3["put_requests"],
            s3["put_requests"] * p["s3_standard_per_thousand_put_requests"] / 1e3,
        ),
        (
            "S3 GET requests",
            s3["get_requests"],
            s3["get_requests"] * p["s3_standard_per_thousand_get_requests"] / 1e3,
        ),
        ("EventBridge events", 1, p["eventbridge_per_million_events"] / 1e6),
    ]


def plane_timing(job: JobShape, a: Assumptions) -> dict[str, Any]:
    """Lower bounds on the plane's own time: enqueue a round, count a round's results.

    Counting is paced by the slower of the aggregator's concurrency (``aggregator_concurrency``
    invocations of ``aggregator_ms`` per batch of 100) and the job's counter item (one
    transaction of up to 99 results at a time).
    """
    per_invocation = AGGREGATOR_BATCH / (a.aggregator_ms / 1000)
    per_counter = MAX_PUTS_PER_TRANSACTION / (a.counter_transaction_ms / 1000)
    count_rate = min(a.aggregator_concurrency * per_invocation, per_counter)
    enqueue_s = enqueue_seconds(job.tasks_per_round, a)
    bounds = dispatch_bounds(a)
    return {
        "enqueue_bound": min(bounds, key=lambda name: bounds[name]),
        "enqueue_seconds_per_round": enqueue_s,
        "enqueue_messages_per_second": job.tasks_per_round / enqueue_s if enqueue_s else 0.0,
        "count_results_per_second": count_rate,
        "count_seconds_per_round": job.tasks_per_round / count_rate,
        "dispatch_and_count_seconds": job.rounds * (enqueue_s + job.tasks_per_round / count_rate),
    }


def estimate(job: JobShape, a: Assumptions) -> dict[str, Any]:
    """Request counts, Lambda usage, DynamoDB units, S3 requests, their cost and the timing bounds.

    Parameters
    ----------
    job:
        The job's shape (``JobShape.from_request`` for a validated ``TrainingRequest``).
    a:
        Workers, durations and the rest of what the model assumes.
    """
    batches = aggregator_batches(job, a)
    sqs = sqs_counts(job, a)
    lam = lambda_usage(job, a, len(batches))
    ddb = dynamodb_units(job, batches)
    s3 = s3_requests(job, a)
    items = priced_lines(sqs, lam, ddb, s3)
    timing = plane_timing(job, a)
    fifo_quota = limit("sqs_fifo_calls_per_second")
    return {
        "request": {
            "kind": job.kind,
            "tasks_per_round": job.tasks_per_round,
            "rounds": job.rounds,
            "tasks": job.tasks,
            "max_parallel": job.max_parallel,
        },
        "assumptions": asdict(a),
        "parallel_tasks": parallel_slots(job, a),
        "warnings": warnings(job, a),
        "sqs": sqs,
        "lambda": lam,
        "dynamodb": {k: ddb[k] for k in ("job_record_bytes", "write_request_units", "read_request_units")},
        "s3": s3,
        "costs_usd": {name: cost for name, _, cost in items},
        "lines": [{"item": name, "count": count, "usd": cost} for name, count, cost in items],
        "total_usd": sum(cost for _, _, cost in items),
        "min_enqueue_seconds_per_round": math.ceil(job.tasks_per_round / MAX_BATCH_ENTRIES) / fifo_quota,
        "min_wall_seconds": job.rounds * round_wall_seconds(job, a),
        "plane": timing,
        "prices_usd": shardq_prices(),
    }


# -- against the alternatives ----------------------------------------------------------------


def _artifact_lines(s3: dict[str, int]) -> list[dict[str, Any]]:
    """The model artifacts' S3 requests: the same whichever service coordinates the shards."""
    puts, gets = s3["put_requests"], s3["get_requests"]
    return [
        {
            "item": "S3 PUT requests (artifacts)",
            "count": puts,
            "usd": puts * price("s3_standard_per_thousand_put_requests") / 1e3,
        },
        {
            "item": "S3 GET requests (models)",
            "count": gets,
            "usd": gets * price("s3_standard_per_thousand_get_requests") / 1e3,
        },
    ]


def _option(name: str, lines: list[dict[str, Any]], s3: dict[str, int], **fields: Any) -> dict[str, Any]:
    coordination = sum(line["usd"] for line in lines)
    artifacts = _artifact_lines(s3)
    return {
        "option": name,
        "lines": lines,
        "artifact_lines": artifacts,
        "coordination_usd": coordination,
        "total_usd": coordination + sum(line["usd"] for line in artifacts),
        **fields,
    }


def _shardq_option(job: JobShape, a: Assumptions, e: dict[str, Any]) -> dict[str, Any]:
    lines = [line for line in e["lines"] if not line["item"].startswith("S3 ")]
    plane = e["plane"]
    notes = [
        f"at most {e['parallel_tasks']} tasks at once (workers, capped by max_parallel {job.max_parallel})"
    ]
    most = max_round_tasks(job.kind)
    if job.tasks_per_round > most:
        notes.append(
            f"a {job.kind} request is validated up to {most:,} tasks per round (contracts.max_round_tasks)"
        )
    return _option(
        "shardq",
        lines,
        e["s3"],
        dispatch_seconds_per_round=plane["enqueue_seconds_per_round"],
        count_seconds_per_round=plane["count_seconds_per_round"],
        wall_seconds=e["min_wall_seconds"],
        notes=notes,
    )


def _step_functions_option(job: JobShape, a: Assumptions, s3: dict[str, int]) -> dict[str, Any]:
    """A Distributed Map per round; each shard a Standard child workflow (``sfn_states_per_child`` states)."""
    per_child = limit("stepfunctions_transitions_per_child_start") + a.sfn_states_per_child
    # Per round: the Map state itself, and a reduce step for data_parallel; plus the start.
    parent = job.rounds * (1 + (1 if job.reduces else 0)) + 1
    transitions = job.rounds * job.tasks_per_round * per_child + parent
    usd = transitions * price("stepfunctions_standard_per_thousand_state_transitions") / 1e3
    concurrency = int(min(a.workers, limit("stepfunctions_distributed_map_max_concurrency")))
    notes = [
        f"at most {int(limit('stepfunctions_distributed_map_max_concurrency')):,} child workflows at once",
        "handing a shard to a GPU worker (activity or .waitForTaskToken) adds API calls not priced here",
    ]
    if a.task_seconds > limit("stepfunctions_express_max_seconds"):
        notes.append(
            f"Express children stop at {limit('stepfunctions_express_max_seconds'):.0f} s: Standard only"
        )
    return _option(
        "Step Functions Distributed Map",
        [{"item": "state transitions (Standard)", "count": transitions, "usd": usd}],
        s3,
        dispatch_seconds_per_round=job.tasks_per_round
        * per_child
        / limit("stepfunctions_state_transitions_per_second"),
        count_seconds_per_round=None,
        wall_seconds=job.rounds
        * (
            math.ceil(job.tasks_per_round / max(1, concurrency)) * a.task_seconds
            + (a.reduce_seconds if job.reduces else 0.0)
        ),
        notes=notes,
    )


def _batch_option(job: JobShape, a: Assumptions, s3: dict[str, int]) -> dict[str, Any]:
    """Array jobs of up to 10,000 children per round, a dependent reduce job; a container start per child."""
    size = int(limit("batch_array_max_size"))
    arrays = job.rounds * math.ceil(job.tasks_per_round / size)
    overhead = a.batch_child_overhead_s
    notes = [
        f"{arrays:,} array job(s): at most {size:,} children each",
        f"a container start per shard: {job.tasks * overhead / 3600:,.1f} GPU-hours of overhead "
        f"at {overhead:g} s each (--batch-overhead-seconds)",
        "no result counting: the job's own code must collect and check the shards' results",
    ]
    if a.task_seconds < limit("batch_recommended_min_job_seconds"):
        notes.append(
            f"shards under {limit('batch_recommended_min_job_seconds'):.0f} s: AWS Batch advises binpacking"
        )
    return _option(
        "AWS Batch array jobs",
        [{"item": "AWS Batch (no charge beyond the compute)", "count": arrays + job.reduces, "usd": 0.0}],
        s3,
        dispatch_seconds_per_round=overhead,
        count_seconds_per_round=None,
        wall_seconds=job.rounds
        * (
            math.ceil(job.tasks_per_round / max(1, a.workers)) * (a.task_seconds + overhead)
            + ((a.reduce_seconds + overhead) if job.reduces else 0.0)
        ),
        overhead_gpu_hours=job.tasks * overhead / 3600,
        notes=notes,
    )


def compare(job: JobShape, a: Assumptions) -> dict[str, Any]:
    """The same job coordinated by shardq, Step Functions Distributed Map and AWS Batch array jobs.

    Each option has its coordination lines and cost, the model artifacts' S3 requests (the same
    in every option), a dispatch time per round (shardq: enqueue at the FIFO quota; Distributed
    Map: child starts at the state-transition rate; Batch: a child's start overhead), a wall time
    and notes on the limits it meets.
    """
    e = estimate(job, a)
    book = price_book()
    options = [
        _shardq_option(job, a, e),
        _step_functions_option(job, a, e["s3"]),
        _batch_option(job, a, e["s3"]),
    ]
    return {
        "request": e["request"],
        "assumptions": e["assumptions"],
        "warnings": e["warnings"],
        "options": options,
        "prices": {"region": book["region"], "checked": book["checked"], "file": PRICES_FILE.name},
    }
