"""What ``status`` and ``list`` print: a job's progress per round, its policy, late results, jobs."""

from __future__ import annotations

import argparse
import sys
from typing import IO, TYPE_CHECKING, Any

from shardq.cli.common import (
    EXIT_OK,
    Painted,
    aws_errors,
    duration,
    engine_for,
    fields,
    paint,
    paint_status,
    print_json,
    status_cell,
    table,
)
from shardq.cli.scheduling_view import scheduling_text
from shardq.core.budgets import cost_of, cost_text
from shardq.core.contracts import JOB_STATUSES
from shardq.core.tally import plan_text, tally
from shardq.core.tenancy import DEFAULT_PRIORITY

if TYPE_CHECKING:
    from shardq.core.jobstore import JobRecord

STATUSES = JOB_STATUSES


def status_data(job: JobRecord) -> dict[str, Any]:
    """``JobView`` fields plus per-(round, phase) progress: what ``status --json`` prints."""
    from shardq.core.operations import progress
    from shardq.core.pipeline import after_view

    after = after_view(job)  # a pipeline job: what it follows, and whether it still waits
    return {
        **job.view().to_dict(),
        **tally(job).to_dict(),
        "plan": plan_text(job),
        "progress": [p.to_dict() for p in progress(job)],
        **({"after": after} if after else {}),
    }


def tasks_cell(data: dict[str, Any]) -> str:
    """A job's tasks recorded of its total, over every round, rung and reduce: ``39/39 (100%)``."""
    return f"{data['tasks_completed']}/{data['tasks_total']} ({data['progress_pct']:g}%)"


def tasks_text(data: dict[str, Any], diverged: int) -> str:
    """The tasks line: ``39/39 (100%) recorded, 0 failed in all``; an asynchronous sweep's total is
    open-ended: ``27 tasks done, 4 in flight, up to 40, 1 failed`` (``async_sweep.AsyncProgress``)."""
    counts = outcome_counts(data["failed"], diverged)
    if "tasks_in_flight" in data:
        return (
            f"{data['tasks_completed']} tasks done, {data['tasks_in_flight']} in flight, "
            f"up to {data['tasks_total']}, {counts}"
        )
    return f"{tasks_cell(data)} recorded, {counts} in all"


def planned_text(data: dict[str, Any], request: dict[str, Any]) -> str | None:
    """With a quorum: the tasks the plan may run, beside the ones the job needs (``tasks``).

    ``shardq estimate`` prices the same upper bound (``shardq.core.tally.planned_total``)."""
    planned = data.get("tasks_planned")
    if planned is None:
        return None
    fraction = float((request.get("quorum") or {}).get("fraction") or 1.0)
    return (
        f"up to {planned} tasks may run (every participant and reduce); a round closes once "
        f"{_percent(fraction)} of its training succeeded, so {data['tasks_total']} count"
    )


def outcome_counts(failed: int, diverged: int) -> str:
    """``2 failed``, and ``, 1 diverged`` once a sweep trial diverged (a non-finite objective:
    done, ranked last, never promoted; ``shardq.core.verdicts``): what every view says beside
    its done count."""
    return f"{failed} failed" + (f", {diverged} diverged" if diverged else "")


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.4g}%"


def policy_fields(request: dict[str, Any]) -> list[tuple[str, str | None]]:
    """How a ``data_parallel`` round runs, from a request as ``TrainingRequest.to_dict`` gives it.

    One ``(name, text)`` pair per policy field; the text is None when the request leaves the
    field unset (the default: every shard trains, a round waits for all, FedAvg, the stack's
    visibility timeout), so ``fields`` skips it.
    """
    part, quorum, strategy = request.get("participation"), request.get("quorum"), request.get("strategy")
    timeout = request.get("task_timeout_seconds")
    if part:
        part = (
            f"{_percent(part.get('fraction', 1.0))} of the shards per round "
            f"(at least {part.get('min_shards', 1)}, seed {part.get('seed', 0)})"
        )
    if quorum:
        deadline = quorum.get("deadline_seconds")
        quorum = f"closes at {_percent(quorum.get('fraction', 1.0))} succeeded" + (
            f", or at its deadline {duration(deadline)} after it starts" if deadline else ""
        )
    if strategy:
        # Numbers to 6 significant digits; a name (fedbuff's staleness function) as it is.
        params = ", ".join(
            f"{k}={number_text(v) if isinstance(v, int | float) else v}"
            for k, v in sorted(strategy.items())
            if k != "name"
        )
        strategy = strategy.get("name", "fedavg") + (f" ({params})" if params else "")
    return [
        ("participation", part),
        ("quorum", quorum),
        ("strategy", strategy),
        ("task timeout", duration(timeout) if timeout else None),
    ]


def policy_line(request: dict[str, Any]) -> str | None:
    """The round policy on one line (``watch``), or None when the request sets none."""
    shown = [f"{name} {text}" for name, text in policy_fields(request) if text]
    return "policy: " + "; ".join(shown) if shown else None


def late_count(engine: Any, job: JobRecord) -> int:
    """Results kept apart as late: they came after their round closed or after the job ended.

    Read for every job, not only one with a closed round: an outcome after its job ended (a
    cancel, a failure) is late too (``shardq.core.store.counting``), and a retried job is
    RUNNING again with the late results of its earlier end. One query of the ``LATE#`` items."""
    return len(engine.store.late_results(job.job_id))


# The current round's recorded results that ``status`` reads for its attempt lines, at most: two
# query pages or so, so status stays cheap on a million-shard round (it then says it stopped).
ATTEMPTS_SCAN = 2000
# Tasks with several attempts the human view names; the rest are counted (--json lists them all).
ATTEMPTS_SHOWN = 10


def attempts_data(engine: Any, job: JobRecord) -> dict[str, Any]:
    """The current round's recorded tasks that took more than one attempt (issue #24: a resumed
    task says where it started): ``{"round", "tasks": [{"shard_id", "task_type", "attempts",
    "resume_step", "earlier"}], "scanned", "complete"}``, read from the first ``ATTEMPTS_SCAN``
    results in key order (``complete`` False when the round has more)."""
    tasks: list[dict[str, Any]] = []
    scanned = 0
    complete = True
    for record in engine.store.iter_results(job.job_id, job.round):
        if scanned == ATTEMPTS_SCAN:
            complete = False
            break
        scanned += 1
        r = record.result
        if r.attempt > 1:
            tasks.append(
                {
                    "shard_id": r.shard_id,
                    "task_type": r.task_type,
                    "attempts": r.attempt,
                    "resume_step": r.resume_step,
                    "earlier": list(r.attempts),
                }
            )
    return {"round": job.round, "tasks": tasks, "scanned": scanned, "complete": complete}


def attempts_text(data: dict[str, Any] | None) -> str | None:
    """``shard 3: 3 attempts, resumed at step 1200; shard 7: 2 attempts, started over`` (None when
    no task of the round needed more than one)."""
    if not data or not data["tasks"]:
        return None
    parts = []
    for t in data["tasks"][:ATTEMPTS_SHOWN]:
        name = f"shard {t['shard_id']}" if t["task_type"] == "train" else t["task_type"]
        start = "started over" if t["resume_step"] is None else f"resumed at step {t['resume_step']}"
        parts.append(f"{name}: {t['attempts']} attempts, {start}")
    more = len(data["tasks"]) - ATTEMPTS_SHOWN
    tail = f"; and {more} more (--json)" if more > 0 else ""
    scope = "" if data["complete"] else f" (of the first {data['scanned']} results)"
    return f"round {data['round'] + 1}{scope}: " + "; ".join(parts) + tail


def late_text(count: int, *, ended: bool = False) -> str | None:
    """The human line for ``count`` late results (None for none); ``ended``: the job is final."""
    if not count:
        return None
    when = "after their round closed or the job ended" if ended else "after their round closed"
    return f"{count} result(s) arrived {when} (kept apart, not counted)"


def number_text(value: Any) -> str:
    """A metric to 6 significant digits. A manifest writes a non-finite one (a mean that overflowed,
    a diverged trial's metric) as its name, ``"inf"``/``"nan"``, to stay standard JSON: read back,
    it prints as that name."""
    return f"{float(value):.6g}"


def metric_text(metrics: dict[str, float]) -> str:
    """``name value`` pairs, sorted by name, each value to 6 significant digits."""
    return ", ".join(f"{name} {number_text(value)}" for name, value in sorted(metrics.items()))


def global_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """What a round's reduce reported of the global model it made (e.g. held-out accuracy)."""
    return dict((summary.get("reduce") or {}).get("metrics") or {})


def global_fields(summaries: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """The latest global model's metrics first, then the latest closed round's shards' weighted means.

    Each names its round: a round whose training closed has its summary (the shards' means) while
    its reduce is still making the global model, so the latest model can be a round behind.
    """
    if not summaries:
        return []
    ordered = sorted(summaries, key=lambda s: int(s["round"]))
    last = ordered[-1]
    means = {n: v["mean"] for n, v in (last.get("metrics") or {}).items()}
    scored = [s for s in ordered if global_metrics(s)]
    model = (
        f"round {int(scored[-1]['round']) + 1}: {metric_text(global_metrics(scored[-1]))}" if scored else None
    )
    return [
        ("global model", model),
        ("shards' mean", f"round {int(last['round']) + 1}: {metric_text(means)}" if means else None),
    ]


def render_status(
    data: dict[str, Any],
    out: IO[str],
    *,
    request: dict[str, Any] | None = None,
    late: int = 0,
    summaries: list[dict[str, Any]] | None = None,
    attempts: dict[str, Any] | None = None,
) -> str:
    """The human view of ``status_data``, with the request's round policy, the late results,
    from the finished rounds' ``summaries`` the latest global model's metrics, and the current
    round's tasks that took several ``attempts`` (``attempts_data``)."""
    diverged = int(data.get("tasks_diverged") or 0)
    head = fields(
        [
            ("job", data["job_id"]),
            ("status", paint_status(data["status"], out)),
            ("after", (data.get("after") or {}).get("text")),
            # A fan-out under way, or one that died midway (the same request submitted again ends it).
            ("enqueuing", paint(data["enqueuing"], "yellow", out) if data.get("enqueuing") else None),
            ("kind", data["kind"]),
            ("tenant", scheduling_text(data)),
            ("round", round_text(data)),
            ("plan", data["plan"]),
            ("tasks", tasks_text(data, diverged)),
            ("cost", cost_of(data)),
            ("planned", None if "tasks_in_flight" in data else planned_text(data, request or {})),
            *global_fields(summaries or []),
            *policy_fields(request or {}),
            ("late", paint(late_text(late, ended=data["status"] != "RUNNING") or "", "yellow", out)),
            ("attempts", attempts_text(attempts)),
            ("started", data["created_at"]),
            *cancel_fields(data),
            ("result", data.get("result_uri")),
            ("error", paint(data["error"], "red", out) if data.get("error") else None),
        ],
        out,
    )
    # A sweep whose trials diverged gets a column for them (among DONE): no other job can have any.
    div = [
        (Painted(str(p["diverged"]), "yellow") if p["diverged"] else 0,) if diverged else ()
        for p in data["progress"]
    ]
    # Priced outcomes get a column for what each phase cost (shardq.core.spend).
    priced = any(p.get("cost_usd") for p in data["progress"])
    rows = [
        (
            p["round"] + 1,
            p["phase"],
            p["done"],
            Painted(str(p["failed"]), "red") if p["failed"] else p["failed"],
            *extra,
            p["total"],
            f"{p['enqueued']}/{p['total']}",
            *((phase_cost(p),) if priced else ()),
        )
        for p, extra in zip(data["progress"], div, strict=True)
    ]
    headers = (
        "ROUND",
        "PHASE",
        "DONE",
        "FAILED",
        *(("DIVERGED",) if diverged else ()),
        "TOTAL",
        "ENQUEUED",
        *(("COST",) if priced else ()),
    )
    return head + "\n\n" + table(rows, headers, out)


def round_text(data: dict[str, Any], *, cell: bool = False) -> str:
    """``2/5 (train)`` (``2/5`` as a ``list`` cell). An asynchronous sweep (ASHA, Optuna) runs its
    rungs at once and its ``round`` stays 0: it shows the furthest rung a task was sent to,
    ``rung 3/3 reached`` (``3/3``), from its ``progress`` rows, so a sweep that ran its top rung never
    reads ``1/3``."""
    if "tasks_in_flight" in data and data.get("progress"):
        furthest = max((p["round"] for p in data["progress"] if p["enqueued"]), default=0)
        return f"{furthest + 1}/{data['rounds']}" if cell else f"rung {furthest + 1}/{data['rounds']} reached"
    return f"{data['round'] + 1}/{data['rounds']}" + ("" if cell else f" ({data['phase']})")


def sent_rungs(job: JobRecord) -> list[dict[str, Any]]:
    """An asynchronous sweep's rungs as ``progress`` rows for ``round_text`` (none for other jobs)."""
    if not job.request.asynchronous:
        return []
    return [{"round": r, "enqueued": job.enqueued(r, "train")} for r in range(job.rounds)]


def phase_cost(p: dict[str, Any]) -> str:
    """A progress row's COST cell: ``-`` for a phase nothing was recorded in yet (an ASHA rung not
    reached, a round not started), not ``unpriced``, which says its workers named no price."""
    if not p.get("cost_usd") and not p["done"] and not p["failed"]:
        return "-"
    return cost_text(p.get("cost_usd") or 0.0)


def cancel_fields(data: dict[str, Any]) -> list[tuple[str, str | None]]:
    """``cancelling: since …`` while a cancel is under way, ``cancelled: at …`` once it is done."""
    requested, finished = data.get("cancel_requested_at"), data.get("finished_at")
    if data["status"] == "CANCELLED":
        return [("cancelled", f"at {finished or requested}")]
    cancelling = f"since {requested}" if requested and data["status"] == "RUNNING" else None
    return [("cancelling", cancelling), ("finished", finished)]


def list_jobs(engine: Any, statuses: tuple[str, ...], limit: int) -> list[JobRecord]:
    """Most recent jobs over ``statuses``, newest first."""
    jobs: list[JobRecord] = []
    for status in statuses:
        jobs.extend(engine.store.list_jobs(status, limit=limit))
    jobs.sort(key=lambda j: j.created_at, reverse=True)
    return jobs[:limit]


def cmd_list(args: argparse.Namespace) -> int:
    """List recent jobs, newest first."""
    engine = engine_for(args)
    statuses = (args.status,) if args.status else STATUSES
    with aws_errors(args):
        jobs = list_jobs(engine, statuses, args.limit)
        views = [{**j.view().to_dict(), **tally(j).to_dict()} for j in jobs]
    if args.json:
        print_json(views)
        return EXIT_OK
    if not views:
        print(
            "no jobs"
            + (f" with status {args.status}" if args.status else "")
            + "; submit one with shardq submit"
        )
        return EXIT_OK
    # A DIVERGED column once a listed sweep has a diverged trial (no other job can have one).
    diverged = any(v["tasks_diverged"] for v in views)
    rows = [
        (
            v["job_id"],
            status_cell(v["status"]),
            v["kind"],
            v.get("tenant") or "default",
            v.get("priority") if v.get("priority") is not None else DEFAULT_PRIORITY,
            round_text({**v, "progress": rungs}, cell=True),
            tasks_cell(v),
            v["failed"],
            *((v["tasks_diverged"],) if diverged else ()),
            v["created_at"],
        )
        for v, rungs in zip(views, (sent_rungs(j) for j in jobs), strict=True)
    ]
    headers = (
        "JOB",
        "STATUS",
        "KIND",
        "TENANT",
        "PRIORITY",
        "ROUND",
        "TASKS",
        "FAILED",
        *(("DIVERGED",) if diverged else ()),
        "CREATED",
    )
    print(table(rows, headers, sys.stdout))
    return EXIT_OK
