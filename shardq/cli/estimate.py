"""``shardq estimate``: what a request costs in coordination (SQS, Lambda, DynamoDB, S3) before you run it.

A count of API requests from how shardq works, priced at list prices. GPUs, data transfer,
storage, logs and free tiers are out of scope: coordination is the part shardq adds.

The model, per job of R rounds of T train tasks on W workers, each task taking S seconds:

* Task queue (FIFO): the fan-out's SendMessageBatch calls (10 tasks each; a reduce task is
  one call); per task one receive, one delete and a heartbeat every visibility/3 seconds
  while it runs; idle long polls (20 s) of workers waiting for the round's last wave.
* Results queue (standard): one send per task; the aggregator's event source receives and
  deletes in tens.
* Tasks run in waves of W that finish together, so each wave's results reach the aggregator
  as batches of up to 100 (a lower bound on invocations: with jitter, batches shrink to what
  the batching window gathers).
* DynamoDB: each aggregator batch is one transaction (result items + the job's counter
  update; transactions cost 2 WRU per item per KB, and the update is charged on the job
  record's size); cursor checkpoints every 500 tasks, phase transitions, round summaries,
  finalize; reads of the job record by workers (cancellation check) and the aggregator.
* S3: one artifact PUT per train task (``--artifacts-per-task``), the reduce's inputs and
  output, the manifest; model GETs of data_parallel rounds and reduces.
* The minimum enqueue time of a round at the FIFO quota: 300 SendMessageBatch calls/s
  (3,000 messages/s) per queue without high-throughput mode.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass
from typing import Any

from shardq.cli.common import EXIT_OK, CliError, add_command, print_json, table

# us-east-1 list prices in USD, from the public pricing pages of each service
# (aws.amazon.com/sqs/pricing, /lambda/pricing, /dynamodb/pricing/on-demand, /s3/pricing,
# /eventbridge/pricing), as of 2025 — DynamoDB on-demand after the 2024-11-01 price cut,
# Lambda at the arm64 rate the stack uses. Free tiers are ignored. Check the pages before
# quoting a figure: this table is the only place to update.
PRICES_USD: dict[str, float] = {
    "sqs_fifo_per_million_requests": 0.50,
    "sqs_standard_per_million_requests": 0.40,
    "lambda_per_million_requests": 0.20,
    "lambda_arm64_per_gb_second": 0.0000133334,
    "dynamodb_per_million_write_request_units": 0.625,
    "dynamodb_per_million_read_request_units": 0.125,
    "s3_standard_per_thousand_put_requests": 0.005,
    "s3_standard_per_thousand_get_requests": 0.0004,
    "eventbridge_per_million_events": 1.00,
}

FIFO_CALLS_PER_SECOND = 300  # per action, per queue (DESIGN.md quotas)
BATCH_ENTRIES = 10
AGGREGATOR_BATCH = 100  # the results event source's batch size (stacks/shardq_stack.py)
CURSOR_CHUNK = 500  # the engine checkpoints its enqueue cursor every 500 tasks
LONG_POLL_S = 20
RESULT_ITEM_KB = 1  # a result item (ShardResult JSON + keys) stays under 1 KB
# The job record: the request plus ≈ 700 bytes of status fields, plus ≈ 20 bytes per counter
# (ok/fail/enq per round and phase). Updates are charged on the record's size.
JOB_RECORD_BASE_BYTES = 700
COUNTER_BYTES = 20


@dataclass(frozen=True)
class Assumptions:
    """What the estimate assumes beyond the request; each is a command-line option."""

    workers: int = 10
    task_seconds: float = 60.0
    reduce_seconds: float = 10.0
    visibility_seconds: int = 300
    artifacts_per_task: int = 1
    splitter_ms: float = 300.0
    aggregator_ms: float = 200.0
    splitter_mb: int = 512
    aggregator_mb: int = 512


def waves(tasks: int, workers: int) -> list[int]:
    """Sizes of the waves ``tasks`` run in on ``workers``."""
    full, rest = divmod(tasks, workers)
    return [workers] * full + ([rest] if rest else [])


def estimate(request: Any, a: Assumptions) -> dict[str, Any]:
    """Request counts, Lambda usage, DynamoDB units, S3 requests and their cost for one job.

    ``request`` is a validated ``TrainingRequest``.
    """
    t, r = request.task_count, request.rounds
    dp = request.kind == "data_parallel"
    reduces = r if dp else 0
    tasks = r * t + reduces
    w = max(1, a.workers)

    # -- SQS ---------------------------------------------------------------------------------
    fanout_calls = r * math.ceil(t / BATCH_ENTRIES) + reduces
    beat = max(0.5, a.visibility_seconds / 3)
    heartbeats = r * t * math.floor(a.task_seconds / beat) + reduces * math.floor(a.reduce_seconds / beat)
    round_wall = math.ceil(t / w) * a.task_seconds + (a.reduce_seconds if dp else 0.0)
    busy = t * a.task_seconds + (a.reduce_seconds if dp else 0.0)
    idle_polls = r * math.ceil(max(0.0, w * round_wall - busy) / LONG_POLL_S)
    worker_receives = tasks + idle_polls
    task_queue_requests = fanout_calls + worker_receives + tasks + heartbeats  # + deletes
    round_waves = waves(t, w)
    agg_train = sum(math.ceil(n / AGGREGATOR_BATCH) for n in round_waves)
    agg_invocations = r * agg_train + reduces
    agg_polls = r * sum(math.ceil(n / BATCH_ENTRIES) for n in round_waves) + reduces
    results_queue_requests = tasks + 2 * agg_polls  # sends + event source receives and deletes

    # -- Lambda ------------------------------------------------------------------------------
    enqueue_s = t / (FIFO_CALLS_PER_SECOND * BATCH_ENTRIES)
    splitter_s = a.splitter_ms / 1000 + enqueue_s
    # Next rounds are enqueued by the aggregator invocation that completes the reduce.
    aggregator_s = agg_invocations * a.aggregator_ms / 1000 + (r - 1) * enqueue_s
    gb_seconds = splitter_s * a.splitter_mb / 1024 + aggregator_s * a.aggregator_mb / 1024
    invocations = 1 + agg_invocations

    # -- DynamoDB ----------------------------------------------------------------------------
    request_bytes = len(request.to_json().encode())
    phases = r * (2 if dp else 1)
    job_bytes = request_bytes + JOB_RECORD_BASE_BYTES + COUNTER_BYTES * 3 * phases
    job_kb = math.ceil(job_bytes / 1024)
    job_4kb = math.ceil(job_bytes / 4096)
    results = tasks
    wru_results = 2 * (results * RESULT_ITEM_KB + agg_invocations * job_kb)
    cursor_updates = r * math.ceil(t / CURSOR_CHUNK) + reduces
    transitions = (2 * r if dp else 0) + 3  # phase/round moves; finalize + event claim + clear
    summaries = r
    wru = job_kb + wru_results + (cursor_updates + transitions) * job_kb + summaries
    rru = (
        tasks * 0.5 * job_4kb  # workers' cancellation check (eventually consistent)
        + (agg_invocations + phases) * job_4kb  # aggregator reads the record (consistent)
        + 2 * math.ceil(results * RESULT_ITEM_KB / 4)  # round completion + manifest queries
    )

    # -- S3 ----------------------------------------------------------------------------------
    puts = r * t * a.artifacts_per_task + 2 * reduces + 1
    has_init = bool(request.model.get("init_uri"))
    # Train tasks with an init model fetch it (round 0 with model.init_uri; every later round);
    # a reduce reads its inputs list and every shard model.
    gets = (t if has_init else 0) + (r - 1) * t + reduces * (t + 1)

    p = PRICES_USD
    items = [
        (
            "SQS FIFO requests (task queue)",
            task_queue_requests,
            task_queue_requests * p["sqs_fifo_per_million_requests"] / 1e6,
        ),
        (
            "SQS standard requests (results queue)",
            results_queue_requests,
            results_queue_requests * p["sqs_standard_per_million_requests"] / 1e6,
        ),
        ("Lambda invocations", invocations, invocations * p["lambda_per_million_requests"] / 1e6),
        ("Lambda GB-seconds (arm64)", gb_seconds, gb_seconds * p["lambda_arm64_per_gb_second"]),
        ("DynamoDB write request units", wru, wru * p["dynamodb_per_million_write_request_units"] / 1e6),
        ("DynamoDB read request units", rru, rru * p["dynamodb_per_million_read_request_units"] / 1e6),
        ("S3 PUT requests", puts, puts * p["s3_standard_per_thousand_put_requests"] / 1e3),
        ("S3 GET requests", gets, gets * p["s3_standard_per_thousand_get_requests"] / 1e3),
        ("EventBridge events", 1, p["eventbridge_per_million_events"] / 1e6),
    ]
    return {
        "request": {"kind": request.kind, "tasks_per_round": t, "rounds": r, "tasks": tasks},
        "assumptions": asdict(a),
        "sqs": {
            "fanout_send_batch_calls": fanout_calls,
            "worker_receives": worker_receives,
            "worker_idle_polls": idle_polls,
            "worker_deletes": tasks,
            "heartbeats": heartbeats,
            "result_sends": tasks,
            "aggregator_receives": agg_polls,
            "aggregator_deletes": agg_polls,
            "task_queue_requests": task_queue_requests,
            "results_queue_requests": results_queue_requests,
        },
        "lambda": {
            "splitter_invocations": 1,
            "aggregator_invocations": agg_invocations,
            "invocations": invocations,
            "gb_seconds": gb_seconds,
        },
        "dynamodb": {"job_record_bytes": job_bytes, "write_request_units": wru, "read_request_units": rru},
        "s3": {"put_requests": puts, "get_requests": gets},
        "costs_usd": {name: cost for name, _, cost in items},
        "lines": [{"item": name, "count": count, "usd": cost} for name, count, cost in items],
        "total_usd": sum(cost for _, _, cost in items),
        "min_enqueue_seconds_per_round": math.ceil(t / BATCH_ENTRIES) / FIFO_CALLS_PER_SECOND,
        "min_wall_seconds": r * round_wall,
        "prices_usd": dict(PRICES_USD),
    }


def render(e: dict[str, Any]) -> str:
    """The estimate as a table with a total and the timing lower bounds."""
    req = e["request"]
    rows = [
        (
            line["item"],
            f"{line['count']:,.1f}" if isinstance(line["count"], float) else f"{line['count']:,}",
            f"${line['usd']:.6f}",
        )
        for line in e["lines"]
    ]
    rows.append(("total", "", f"${e['total_usd']:.6f}"))
    a = e["assumptions"]
    head = (
        f"{req['kind']}: {req['tasks_per_round']} tasks per round x {req['rounds']} round(s) = "
        f"{req['tasks']} tasks on {a['workers']} workers at {a['task_seconds']:g} s per task "
        "(us-east-1 list prices, no free tier)"
    )
    quota = (
        f"{FIFO_CALLS_PER_SECOND} SendMessageBatch calls/s ({FIFO_CALLS_PER_SECOND * BATCH_ENTRIES:,} msg/s)"
    )
    tail = (
        f"minimum enqueue time per round: {e['min_enqueue_seconds_per_round']:.2f} s at {quota}; "
        "high-throughput FIFO goes further\n"
        f"minimum wall time: {e['min_wall_seconds']:,.0f} s of training waves (GPUs not priced)"
    )
    if "fleet" in e:
        f = e["fleet"]
        tail += (
            f"\nfleet: {f['workers']} worker(s) per round at backlog per worker {f['backlog_per_worker']:g} "
            f"(fleet_max_workers {f['max_workers']})"
        )
    return f"{head}\n\n{table(rows, ('ITEM', 'COUNT', 'COST'))}\n\n{tail}"


def cmd_estimate(args: argparse.Namespace) -> int:
    """Estimate a request's coordination cost; nothing is created."""
    from shardq.cli.jobs import load_request
    from shardq.core.contracts import TrainingRequest, ValidationError

    payload = load_request(args.request)
    try:
        request = TrainingRequest.from_dict(payload)
    except ValidationError as exc:
        raise CliError(str(exc)) from None
    if args.workers < 1 or args.task_seconds < 0:
        raise CliError("--workers must be at least 1 and --task-seconds at least 0")
    workers, fleet = args.workers, None
    if args.fleet_max_workers is not None:
        # The ECS fleet's arithmetic (shardq.core.scaling): a round's tasks are its backlog.
        from shardq.core.scaling import desired_workers

        if args.fleet_max_workers < 1 or args.backlog_per_worker <= 0:
            raise CliError("--fleet-max-workers must be at least 1 and --backlog-per-worker positive")
        workers = max(
            1,
            desired_workers(
                request.task_count, 0, target=args.backlog_per_worker, max_workers=args.fleet_max_workers
            ),
        )
        fleet = {
            "max_workers": args.fleet_max_workers,
            "backlog_per_worker": args.backlog_per_worker,
            "workers": workers,
        }
    assumptions = Assumptions(
        workers=workers,
        task_seconds=args.task_seconds,
        reduce_seconds=args.reduce_seconds,
        visibility_seconds=args.visibility_timeout,
        artifacts_per_task=args.artifacts_per_task,
    )
    result = estimate(request, assumptions)
    if fleet is not None:
        result["fleet"] = fleet
    if args.json:
        print_json(result)
    else:
        print(render(result))
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``estimate`` command."""
    p = add_command(
        sub,
        "estimate",
        help="coordination cost of a request at list prices, and its minimum enqueue time",
        description=__doc__,
        example="  shardq estimate req.json --workers 64 --task-seconds 600",
    )
    p.add_argument("request", help="TrainingRequest JSON file ('-' for stdin)")
    p.add_argument("--workers", type=int, default=Assumptions.workers, help="workers (GPU slots) polling")
    p.add_argument(
        "--task-seconds", type=float, default=Assumptions.task_seconds, help="seconds per train task"
    )
    p.add_argument(
        "--reduce-seconds", type=float, default=Assumptions.reduce_seconds, help="seconds per reduce"
    )
    p.add_argument(
        "--visibility-timeout",
        type=int,
        default=Assumptions.visibility_seconds,
        help="the task queue's visibility timeout (heartbeat every third of it)",
    )
    p.add_argument(
        "--artifacts-per-task", type=int, default=Assumptions.artifacts_per_task, help="S3 PUTs per task"
    )
    p.add_argument(
        "--fleet-max-workers",
        type=int,
        default=None,
        help="size the workers as the ECS fleet would (context fleet_max_workers); overrides --workers",
    )
    p.add_argument(
        "--backlog-per-worker",
        type=float,
        default=1.0,
        help="the fleet's scaling target (context fleet_backlog_per_worker), with --fleet-max-workers",
    )
    p.add_argument("--json", action="store_true", help="every count and price as JSON")
    p.set_defaults(func=cmd_estimate)
