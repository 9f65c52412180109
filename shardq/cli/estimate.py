"""``shardq estimate``: what a request costs in coordination (SQS, Lambda, DynamoDB, S3) before you run it.

A count of API requests from how shardq works, priced at us-east-1 list prices
(shardq/core/prices.json, with the pages and the date they were read). GPUs, data transfer,
storage, logs and free tiers are out of scope: coordination is the part shardq adds. The model
lives in shardq.core.cost; its docstring lists what is counted.

A job of max_parallel L runs at most L tasks at once (a FIFO message group hands out one message
at a time), whatever the number of workers: the wall time counts waves of min(workers, L) tasks,
and workers beyond L show up as idle long polls (and a warning).

--compare prices the same job (shards, rounds, shard duration, workers) coordinated by AWS Step
Functions Distributed Map (state transitions, child workflows) and AWS Batch array jobs (10,000
children per array job, a container start per shard), beside shardq's dispatch and count times.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

from shardq.cli.common import EXIT_OK, CliError, add_command, print_json, table
from shardq.cli.latency import add_options as add_latency_options
from shardq.cli.latency import cmd_latency
from shardq.core.cost import Assumptions, JobShape, compare, estimate, limit, shardq_prices
from shardq.core.preemption_cost import CheckpointPlan, checkpoint_costs, checkpoint_lines, heartbeat_at_scale

# The prices shardq's requests are charged at (from shardq/core/prices.json), by name.
PRICES_USD: dict[str, float] = shardq_prices()


def _count(value: float) -> str:
    return f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"


def render(e: dict[str, Any]) -> str:
    """The estimate as a table with a total and the timing lower bounds."""
    req, a = e["request"], e["assumptions"]
    rows = [(line["item"], _count(line["count"]), f"${line['usd']:.6f}") for line in e["lines"]]
    rows.append(("total", "", f"${e['total_usd']:.6f}"))
    if req.get("rungs"):
        rungs = req["rungs"]
        # ASHA promotes as results arrive: the counts are what it can run at most (status's bound).
        method, up_to = (
            ("ASHA (asynchronous successive halving)", "up to ")
            if req.get("early_stopping") == "asha"
            else ("successive halving", "")
        )
        typical = f" (usually about {req['tasks_typical']}, as halving's)" if "tasks_typical" in req else ""
        head = (
            f"{req['kind']}: {method}, {up_to}{' + '.join(str(r['trials']) for r in rungs)} trials over "
            f"{len(rungs)} rungs ({req['budget_param']} {', '.join(str(r['budget']) for r in rungs)}) = "
            f"{up_to}{req['tasks']} tasks{typical} on {a['workers']} workers at {a['task_seconds']:g} s per "
            f"first-rung task, longer as the budget grows; budget {up_to}{req['budget_spent']} of "
            f"{req['budget_without_stopping']} {req['budget_param']} without stopping (us-east-1 list "
            "prices, no free tier)"
        )
    elif "fedbuff" in req:
        f = req["fedbuff"]
        head = (
            f"{req['kind']}: FedBuff, {req['rounds']} versions x {f['buffer_size']} updates + "
            f"{req['rounds']} reduces = {req['tasks']} tasks (and up to {f['surplus_at_most']} updates "
            f"finishing after the last buffer fills, plus any staler than max_staleness "
            f"{f['max_staleness']}) from {f['clients']} clients on {a['workers']} workers at "
            f"{a['task_seconds']:g} s per task (us-east-1 list prices, no free tier)"
        )
    else:
        # With a quorum, the count is what may run (every participant); a round may close early.
        up_to = "up to " if "tasks_at_least" in req else ""
        quorum = (
            f" (a round may close once {req['quorum_fraction'] * 100:g}% of its training succeeded: "
            f"at least {req['tasks_at_least']}; `shardq status` counts those)"
            if up_to
            else ""
        )
        head = (
            f"{req['kind']}: {req['tasks_per_round']} tasks per round x {req['rounds']} round(s) = "
            f"{up_to}{req['tasks']} tasks{quorum} on {a['workers']} workers at {a['task_seconds']:g} s "
            "per task (us-east-1 list prices, no free tier)"
        )
    calls = int(limit("sqs_fifo_calls_per_second"))
    quota = f"{calls} SendMessageBatch calls/s ({calls * 10:,} msg/s)"
    plane = e["plane"]
    tail = (
        f"minimum enqueue time per round: {e['min_enqueue_seconds_per_round']:.2f} s at {quota}; "
        "high-throughput FIFO goes further, as far as the splitter's CPU allows\n"
        f"minimum wall time: {e['min_wall_seconds']:,.0f} s of training waves, {e['parallel_tasks']} task(s) "
        f"at once (max_parallel {req['max_parallel']}; GPUs not priced)\n"
        f"the plane: enqueue {plane['enqueue_messages_per_second']:,.0f} msg/s"
        f"{' (high-throughput FIFO)' if a['high_throughput'] else ''}, count "
        f"{plane['count_results_per_second']:,.0f} results/s: at least "
        f"{plane['dispatch_and_count_seconds']:,.1f} s of the plane's own time over {req['rounds']} round(s)"
    )
    if "heartbeats_at_scale" in e:
        h = e["heartbeats_at_scale"]
        tail += (
            f"\nheartbeats: a {h['lease_seconds']} s lease renewed every third of it, "
            f"{h['calls_per_slot_hour']:,.0f} calls per busy slot-hour: ${h['usd']:.2f} per "
            f"{h['slot_hours']:,.0f} slot-hours; a vanished worker's task returns after "
            f"{h['lease_seconds']} s at most"
        )
    if "checkpoints" in e:
        c = e["checkpoints"]
        tail += f"\ncheckpoints: {c['saves_per_task']} per task, {c['saves']:,} saves, ${c['total_usd']:.6f}"
    if "fleet" in e:
        f = e["fleet"]
        tail += (
            f"\nfleet: {f['workers']} worker(s) per round at backlog per worker {f['backlog_per_worker']:g} "
            f"(fleet_max_workers {f['max_workers']})"
        )
    return f"{head}\n\n{table(rows, ('ITEM', 'COUNT', 'COST'))}\n\n{tail}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "--"
    return f"{value * 1000:,.0f} ms" if value < 1 else f"{value:,.1f} s"


def render_compare(c: dict[str, Any]) -> str:
    """The options side by side, then each option's notes."""
    req, a = c["request"], c["assumptions"]
    per = 1000 / max(1, req["tasks"])
    rows = [
        (
            o["option"],
            f"${o['coordination_usd']:,.4f}",
            f"${o['coordination_usd'] * per:,.4f}",
            f"${o['total_usd']:,.4f}",
            _seconds(o["dispatch_seconds_per_round"]),
            _seconds(o["count_seconds_per_round"]),
            f"{o['wall_seconds']:,.0f} s",
        )
        for o in c["options"]
    ]
    head = (
        f"{req['kind']}: {req['tasks_per_round']:,} shards x {req['rounds']} round(s) on "
        f"{a['workers']:,} workers at {a['task_seconds']:g} s per shard ({c['prices']['region']} list "
        f"prices checked {c['prices']['checked']}, shardq/core/{c['prices']['file']}; GPUs not priced)"
    )
    headers = (
        "OPTION",
        "COORDINATION",
        "PER 1,000 TASKS",
        "WITH ARTIFACTS (S3)",
        "DISPATCH/ROUND",
        "COUNT/ROUND",
        "WALL",
    )
    notes = "\n".join(f"{o['option']}: " + "; ".join(o["notes"]) for o in c["options"])
    return f"{head}\n\n{table(rows, headers)}\n\n{notes}"


def _request(args: argparse.Namespace) -> Any:
    from shardq.cli.submit import load_request
    from shardq.core.contracts import TrainingRequest, ValidationError

    payload = load_request(args.request)
    try:
        return TrainingRequest.from_dict(payload)
    except ValidationError as exc:
        raise CliError(str(exc)) from None


def _shape(request: Any) -> JobShape:
    """The request's shape; a ``data_parallel`` round trains its ``participation`` sample only."""
    from shardq.core.planning import participant_count

    job = JobShape.from_request(request)
    buffer = fedbuff_buffer(request)
    if buffer is not None:
        # FedBuff: each version applies one buffer of K updates, then one reduce makes it.
        return replace(job, tasks_per_round=buffer)
    if request.kind == "data_parallel":
        job = replace(job, tasks_per_round=participant_count(request, 0))
    return job


def fedbuff_buffer(request: Any) -> int | None:
    """A FedBuff request's ``buffer_size`` (K); None for any other request."""
    strategy = request.strategy
    if strategy is None or strategy.name != "fedbuff":
        return None
    return int(strategy.params["buffer_size"])


def _fedbuff_note(request: Any, job: JobShape, result: dict[str, Any]) -> None:
    """Say what a FedBuff estimate counts: K updates a version; clients still training when the
    last buffer fills finish too (``surplus``, at most one each but the last one's)."""
    params = request.strategy.params
    clients = request.task_count
    result["request"]["fedbuff"] = {
        "buffer_size": job.tasks_per_round,
        "clients": clients,
        "max_staleness": int(params["max_staleness"]),
        "surplus_at_most": min(clients, job.max_parallel) - 1,
    }


# Keys of an estimate that add up over a halving sweep's rungs (each rung priced as a one-round
# job of its trials); the rest are rates, bounds or inputs, taken as the largest or the first.
_ADDITIVE = ("sqs", "lambda", "s3", "costs_usd", "total_usd", "min_wall_seconds")


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, dict):
        return {k: _add(v, b[k]) for k, v in a.items()}
    return a + b


def _rung_estimate(request: Any, job: JobShape, assumptions: Assumptions) -> dict[str, Any]:
    """A successive-halving sweep: each rung priced for its trials and its budget, then summed.

    ``--task-seconds`` is a first-rung task (``min_budget``); a later rung's task trains its
    budget increment over the rung before (a promoted trial resumes from its model), so it
    takes proportionally longer. Per-job requests (the splitter's call, the manifest) are
    counted once per rung: an upper bound by a few requests.
    """
    from shardq.core.async_sweep import rung_bounds
    from shardq.core.tally import rung_sizes

    es = request.early_stopping
    # ASHA's counts are the most it can run (a trial promoted early may drop out of the top later).
    sizes = (rung_bounds if es.method == "asha" else rung_sizes)(request, job.tasks_per_round)
    budgets = es.budgets
    parts, rungs = [], []
    for k, (trials, budget) in enumerate(zip(sizes, budgets, strict=True)):
        increment = budget - (budgets[k - 1] if k else 0)
        seconds = assumptions.task_seconds * increment / budgets[0]
        parts.append(
            estimate(
                replace(job, tasks_per_round=trials, rounds=1), replace(assumptions, task_seconds=seconds)
            )
        )
        rungs.append({"rung": k, "trials": trials, "budget": budget, "task_seconds": seconds})
    total = dict(parts[0])
    for part in parts[1:]:
        for key in _ADDITIVE:
            total[key] = _add(total[key], part[key])
        units = ("write_request_units", "read_request_units")
        total["dynamodb"] = {
            k: v + (part["dynamodb"][k] if k in units else 0) for k, v in total["dynamodb"].items()
        }
        total["plane"] = {
            **total["plane"],
            "dispatch_and_count_seconds": total["plane"]["dispatch_and_count_seconds"]
            + part["plane"]["dispatch_and_count_seconds"],
        }
    total["lines"] = [{**line, "usd": total["costs_usd"][line["item"]]} for line in parts[0]["lines"]]
    counts: dict[str, float] = {}
    for part in parts:
        for line in part["lines"]:
            counts[line["item"]] = counts.get(line["item"], 0) + line["count"]
    total["lines"] = [{**line, "count": counts[line["item"]]} for line in total["lines"]]
    total["warnings"] = list(dict.fromkeys(w for part in parts for w in part["warnings"]))
    total["request"] = {
        **parts[0]["request"],
        "tasks_per_round": sizes[0],
        "rounds": len(sizes),
        "tasks": sum(sizes),
        "rungs": rungs,
        "early_stopping": es.method,
        "budget_param": es.budget_param,
        "budget_spent": sum(
            n * (b - (budgets[k - 1] if k else 0))
            for k, (n, b) in enumerate(zip(sizes, budgets, strict=True))
        ),
        "budget_without_stopping": sizes[0] * budgets[-1],
    }
    if es.method == "asha":  # what it usually runs: about halving's counts (arrivals in random order)
        total["request"]["tasks_typical"] = sum(rung_sizes(request, job.tasks_per_round))
    return total


def _what_if(args: argparse.Namespace, job: JobShape) -> JobShape:
    """The request's shape with --shards / --rounds / --max-parallel applied (nothing is submitted)."""
    given = {"--shards": args.shards, "--rounds": args.rounds, "--max-parallel": args.max_parallel}
    bad = [name for name, value in given.items() if value is not None and value < 1]
    if bad:
        raise CliError(f"{', '.join(bad)} must be at least 1")
    return replace(
        job,
        tasks_per_round=args.shards or job.tasks_per_round,
        rounds=args.rounds or job.rounds,
        max_parallel=args.max_parallel or job.max_parallel,
    )


def _fleet_workers(args: argparse.Namespace, job: JobShape) -> tuple[int, dict[str, Any] | None]:
    """Workers as given, or as the ECS fleet would size them for a round (shardq.core.scaling)."""
    if args.fleet_max_workers is None:
        return args.workers, None
    from shardq.core.scaling import desired_workers

    if args.fleet_max_workers < 1 or args.backlog_per_worker <= 0:
        raise CliError("--fleet-max-workers must be at least 1 and --backlog-per-worker positive")
    # A round's tasks are the backlog; its lanes cap the tasks that can run (the fleet's rule).
    lanes = min(job.max_parallel, job.tasks_per_round)
    workers = max(
        1,
        desired_workers(
            job.tasks_per_round,
            0,
            target=args.backlog_per_worker,
            max_workers=args.fleet_max_workers,
            lanes=lanes,
        ),
    )
    fleet = {
        "max_workers": args.fleet_max_workers,
        "backlog_per_worker": args.backlog_per_worker,
        "workers": workers,
    }
    return workers, fleet


def _assumptions(args: argparse.Namespace, workers: int) -> Assumptions:
    if workers < 1 or args.task_seconds < 0:
        raise CliError("--workers must be at least 1 and --task-seconds at least 0")
    if args.batch_overhead_seconds < 0:
        raise CliError("--batch-overhead-seconds must be at least 0")
    return Assumptions(
        workers=workers,
        task_seconds=args.task_seconds,
        reduce_seconds=args.reduce_seconds,
        visibility_seconds=args.visibility_timeout,
        artifacts_per_task=args.artifacts_per_task,
        high_throughput=args.high_throughput,
        batch_child_overhead_s=args.batch_overhead_seconds,
    )


def _preemption(args: argparse.Namespace, job: JobShape, a: Assumptions, result: dict[str, Any]) -> None:
    """Add the heartbeats at fleet scale and, with ``--checkpoint-every``, the checkpoints' cost."""
    if args.checkpoint_every < 0 or args.checkpoint_mib < 0:
        raise CliError("--checkpoint-every and --checkpoint-mib must be at least 0 (0: no checkpoints)")
    result["heartbeats_at_scale"] = heartbeat_at_scale(a.visibility_seconds)
    if args.checkpoint_every > 0:
        c = checkpoint_costs(job, a, CheckpointPlan(args.checkpoint_every, args.checkpoint_mib))
        result["checkpoints"] = c
        result["lines"] += checkpoint_lines(c)
        result["total_usd"] += c["total_usd"]


def _quorum(request: Any, job: JobShape, result: dict[str, Any]) -> None:
    """With a quorum: the fewest tasks the job can end with, beside the ``tasks`` that may run.

    The estimate prices every participant (the upper bound); ``status`` counts what a round
    needs, the quorum's share (``shardq.core.tally.quorum_share``, the one rule)."""
    from shardq.core.tally import quorum_share

    if request.quorum is None or request.kind != "data_parallel":
        return
    skipped = job.tasks_per_round - quorum_share(job.tasks_per_round, request.quorum.fraction)
    result["request"]["tasks_at_least"] = job.tasks - job.rounds * skipped
    result["request"]["quorum_fraction"] = request.quorum.fraction


def _checkpoints_priced_here(args: argparse.Namespace, halving: bool) -> None:
    """Refuse ``--checkpoint-every`` where it would be silently left out of the figures."""
    if args.checkpoint_every <= 0:
        return
    if args.compare:
        raise CliError(
            "--checkpoint-every is not priced with --compare: checkpoints cost the same whichever "
            "service coordinates the shards. Estimate them without --compare"
        )
    if halving:
        raise CliError(
            "--checkpoint-every prices tasks of one length; a successive-halving sweep's rungs "
            "differ. Price one rung with --rounds 1 and that rung's --task-seconds"
        )


def cmd_estimate(args: argparse.Namespace) -> int:
    """Estimate a request's coordination cost (or compare it with the alternatives); nothing is created."""
    if args.latency:  # a round's coordination latency on AWS (shardq.cli.latency); the request is optional
        return cmd_latency(args)
    if args.request is None:
        raise CliError("a request file is required (shardq estimate req.json), except with --latency")
    request = _request(args)
    job = _what_if(args, _shape(request))
    workers, fleet = _fleet_workers(args, job)
    assumptions = _assumptions(args, workers)
    halving = request.early_stopping is not None and not args.rounds
    if halving and args.compare:
        raise CliError(
            "--compare prices rounds of equal size; a successive-halving sweep's rungs shrink. "
            "Estimate it without --compare, or compare one rung with --rounds 1"
        )
    _checkpoints_priced_here(args, halving)
    if args.compare:
        result = compare(job, assumptions)
    elif halving:
        result = _rung_estimate(request, job, assumptions)
        result["heartbeats_at_scale"] = heartbeat_at_scale(assumptions.visibility_seconds)
    else:
        result = estimate(job, assumptions)
        _preemption(args, job, assumptions, result)
        _quorum(request, job, result)
        if fedbuff_buffer(request) is not None and not args.shards:
            _fedbuff_note(request, job, result)
    if fleet is not None:
        result["fleet"] = fleet
    if args.json:
        print_json(result)
    else:
        print(render_compare(result) if args.compare else render(result))
        for warning in result["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``estimate`` command."""
    p = add_command(
        sub,
        "estimate",
        help="coordination cost of a request at list prices, its dispatch time, and the alternatives'",
        description=__doc__,
        example=(
            "  shardq estimate req.json --workers 64 --task-seconds 600\n"
            "  shardq estimate req.json --workers 64 --task-seconds 600 --compare\n"
            "  shardq estimate --latency                       # a FedAvg round's p50/p99 on AWS"
        ),
    )
    _job_options(p)
    _model_options(p)
    add_latency_options(p)
    p.add_argument("--json", action="store_true", help="every count and price as JSON")
    p.set_defaults(func=cmd_estimate)


def _job_options(p: argparse.ArgumentParser) -> None:
    """The job: the request, what-ifs over it, the workers and the durations."""
    p.add_argument("request", nargs="?", default=None, help="TrainingRequest JSON file ('-' for stdin)")
    p.add_argument(
        "--shards",
        type=int,
        default=None,
        help="what if the request had this many shards (tasks) per round; nothing is submitted, so "
        "a real request's cap (1,000,000 for map, 10,000 for data_parallel and sweep) does not apply",
    )
    p.add_argument("--rounds", type=int, default=None, help="what if the request had this many rounds")
    p.add_argument(
        "--max-parallel",
        type=int,
        default=None,
        help="what if the request had this max_parallel (FIFO lanes)",
    )
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
        help="the workers' task lease (shardq worker --visibility-timeout; a heartbeat every third of it)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="a train task saves a checkpoint this often (ctx.save_checkpoint): count its S3 requests "
        "and storage (default 0: none)",
    )
    p.add_argument("--checkpoint-mib", type=float, default=100.0, help="size of one checkpoint, MiB (100)")
    p.add_argument(
        "--artifacts-per-task", type=int, default=Assumptions.artifacts_per_task, help="S3 PUTs per task"
    )


def _model_options(p: argparse.ArgumentParser) -> None:
    """The queue mode, the fleet sizing and the comparison."""
    p.add_argument(
        "--high-throughput",
        action="store_true",
        help="the task queue is high-throughput FIFO (context fifo_high_throughput): enqueue at its quota",
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
    p.add_argument(
        "--compare",
        action="store_true",
        help="the same job on Step Functions Distributed Map and AWS Batch array jobs, side by side",
    )
    p.add_argument(
        "--batch-overhead-seconds",
        type=float,
        default=Assumptions.batch_child_overhead_s,
        help="with --compare: seconds an AWS Batch child spends starting its container (default 30)",
    )
