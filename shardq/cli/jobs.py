"""Job commands: ``submit``, ``status``, ``list``, ``watch``, ``result``, ``cancel``, ``retry``.

Reads go straight to the job table and the artifact bucket the stack's outputs name; a
submit invokes the splitter Lambda (the same path as ``aws lambda invoke``), so the CLI
never needs more than the permissions an operator has anyway.

This module registers the commands and holds the ones that only compose others (``status``,
``cancel``, ``retry``); each bigger command lives in its own module: ``submit``, ``status``
(the status and list views), ``watch`` and ``result``.
"""

from __future__ import annotations

import argparse
import sys

from shardq.cli.common import (
    EXIT_JOB_FAILED,
    EXIT_OK,
    CliError,
    add_command,
    aws_errors,
    engine_for,
    get_job,
    paint_status,
    print_json,
)
from shardq.cli.result import cmd_result
from shardq.cli.status import STATUSES, attempts_data, cmd_list, late_count, render_status, status_data
from shardq.cli.submit import cmd_submit
from shardq.cli.track import add_mlflow_options
from shardq.cli.watch import cmd_watch, watch
from shardq.core import fedbuff_view
from shardq.core.stall import DEFAULT_STALL_AFTER_S

# -- status, cancel and retry ----------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    """Print a job's status and progress per round."""
    engine = engine_for(args)
    with aws_errors(args):
        job = get_job(engine, args.job)
        if args.wait and job.status == "RUNNING":
            return watch(
                args, args.job, out=sys.stderr if args.json else sys.stdout, quiet=True, engine=engine
            )
        # The current round's tasks that took several attempts, and where each resumed (issue #24).
        attempts = attempts_data(engine, job)
        if args.json:
            fedbuff = fedbuff_view.progress(engine.store, job)
            extra = {"fedbuff": fedbuff} if fedbuff else {}
            print_json({**status_data(job), "attempts": attempts, **extra})
        else:
            late = late_count(engine, job)
            summaries = engine.store.round_summaries(job.job_id) if job.kind == "data_parallel" else []
            text = render_status(
                status_data(job),
                sys.stdout,
                request=job.request.to_dict(),
                late=late,
                summaries=summaries,
                attempts=attempts,
            )
            print(text + fedbuff_view.text(fedbuff_view.progress(engine.store, job)))
    return EXIT_OK if not args.wait or job.status == "SUCCEEDED" else EXIT_JOB_FAILED


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a running job and say what is still in flight."""
    from shardq.core.jobstore import JobNotFound
    from shardq.core.operations import cancel

    engine = engine_for(args)
    with aws_errors(args):
        try:
            report = cancel(engine, args.job)
        except JobNotFound:
            get_job(engine, args.job)  # raises the NotFoundError with its fix
            raise
    if args.json:
        print_json(report.to_dict())
    elif report.cancelled and report.closing_ranges:
        print(
            f"{args.job} is being cancelled: workers drop its queued tasks unrun, and its round closes in "
            f"{report.closing_ranges} ranges; it is {paint_status('CANCELLED')} when the last is stored "
            f"(`shardq status {args.job}`)."
        )
    elif report.cancelled:
        print(f"{args.job} {paint_status('CANCELLED')}: workers drop its queued tasks unrun.")
        if report.outstanding and report.queue_in_flight == 0:
            # Nothing in flight on the task queue (an approximate count): workers should drop every
            # one unrun; "at most 0 ... will run to the end" said both at once.
            print(
                f"{report.outstanding} task(s) of round {report.round + 1} ({report.phase}) have no "
                "result yet; the task queue reports none of them held by a worker right now, so workers "
                "drop them unrun; a result that still comes is kept apart as late and not counted "
                f"(`shardq status {args.job}` shows how many)."
            )
        elif report.outstanding:
            running = (
                f"at most {report.queue_in_flight} of them are held by workers right now"
                if report.queue_in_flight is not None
                else "the ones workers hold"
            )
            print(
                f"{report.outstanding} task(s) of round {report.round + 1} ({report.phase}) have no "
                f"result yet; {running} and will run to the end; their results arrive after the job "
                f"ended, so they are kept apart as late and not counted (`shardq status {args.job}` "
                "shows how many)."
            )
        else:
            print("no task is in flight.")
    elif report.status == "CANCELLED":
        print(f"{args.job} was already CANCELLED; nothing to do.")
    else:
        raise CliError(f"job {args.job} already finished as {report.status}; there is nothing to cancel")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    """Re-enqueue a job's failed shards with fresh deduplication ids; the job resumes."""
    from shardq.core.jobstore import JobNotFound
    from shardq.core.operations import OperationError, retry_failed

    engine = engine_for(args)
    with aws_errors(args):
        try:
            report = retry_failed(engine, args.job)
        except JobNotFound:
            get_job(engine, args.job)
            raise
        except OperationError as exc:
            raise CliError(str(exc)) from None
    if args.json:
        print_json(report.to_dict())
    else:
        shards = ", ".join(str(s) for s in report.retried[:20]) + (" ..." if len(report.retried) > 20 else "")
        print(
            f"{args.job}: re-enqueued {len(report.retried)} {report.phase} task(s) of round "
            f"{report.round + 1} (shards {shards}; generation {report.generation}); "
            f"job is {paint_status(report.status)}"
        )
        print(f"follow it with: shardq watch {args.job}")
    if args.wait:
        return watch(args, args.job)
    return EXIT_OK


# -- registration ---------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    """Add the job commands."""
    p = add_command(
        sub,
        "submit",
        help="validate a training request, start the job, print its id",
        example="  shardq submit examples/requests/data_parallel.json --wait\n"
        "  JOB=$(shardq submit req.json --job-id nightly-2026-01-31)",
    )
    p.add_argument("request", help="TrainingRequest JSON file ('-' for stdin)")
    p.add_argument("--job-id", help="client token: the same id submitted twice is one job")
    p.add_argument("--wait", action="store_true", help="then watch the job (exit code follows its status)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls with --wait")
    p.add_argument("--timeout", type=float, default=None, help="stop waiting after this many seconds")
    p.add_argument(
        "--traceback", action="store_true", help="show failed tasks' tracebacks, not one line each"
    )
    p.add_argument("--json", action="store_true", help="print the splitter's answer as JSON")
    p.add_argument(
        "--direct",
        action="store_true",
        help="run the splitter's logic in this process instead of invoking the Lambda "
        "(for endpoints where the splitter is not deployed)",
    )
    p.set_defaults(func=cmd_submit)

    p = add_command(
        sub,
        "status",
        help="a job's status and progress per round",
        example="  shardq status job-20260131-120000-1a2b3c4d\n  shardq status JOB --json | jq .progress",
    )
    p.add_argument("job", help="job id")
    p.add_argument("--json", action="store_true", help="JobView fields plus progress, as JSON")
    p.add_argument("--wait", action="store_true", help="wait until the job ends; exit 1 unless it SUCCEEDED")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls with --wait")
    p.add_argument("--timeout", type=float, default=None, help="stop waiting after this many seconds")
    p.add_argument(
        "--traceback", action="store_true", help="show failed tasks' tracebacks, not one line each"
    )
    p.set_defaults(func=cmd_status)

    p = add_command(
        sub, "list", help="recent jobs, newest first", example="  shardq list --status RUNNING --limit 5"
    )
    p.add_argument("--status", choices=STATUSES, help="only jobs with this status")
    p.add_argument("--limit", type=int, default=20, help="at most this many jobs (default 20)")
    p.add_argument(
        "--json", action="store_true", help="JobView objects with each job's task totals, as a JSON list"
    )
    p.set_defaults(func=cmd_list)

    p = add_command(
        sub,
        "watch",
        help="follow a job live: progress per round, throughput, ETA, failures",
        example="  shardq watch JOB && echo trained\n  shardq watch JOB --json   # JSON lines, one per poll",
    )
    p.add_argument("job", help="job id")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls (default 2)")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (exit 1)")
    p.add_argument(
        "--traceback", action="store_true", help="show failed tasks' tracebacks, not one line each"
    )
    p.add_argument("--json", action="store_true", help="JSON lines: progress, failure and finished events")
    p.add_argument(
        "--stall-after",
        type=float,
        default=DEFAULT_STALL_AFTER_S,
        metavar="SECONDS",
        help="warn (and withhold the ETA) when no result came for this long while tasks are in flight "
        f"or results sit in a DLQ (default {DEFAULT_STALL_AFTER_S:g})",
    )
    add_mlflow_options(p, env_default=False)
    p.set_defaults(func=cmd_watch)

    p = add_command(
        sub,
        "result",
        help="a finished job's result manifest (metrics, leaderboard, outputs)",
        example="  shardq result JOB\n  shardq result JOB --download ./model",
    )
    p.add_argument("job", help="job id")
    p.add_argument("--json", action="store_true", help="the manifest as stored (result.json)")
    p.add_argument("--download", metavar="DIR", help="save result.json and the final / best model here")
    p.add_argument(
        "--plot", metavar="FILE.png", help="draw the metric curves per round into an image (make dashboard)"
    )
    p.set_defaults(func=cmd_result)

    p = add_command(
        sub,
        "cancel",
        help="cancel a running job; prints what will still finish",
        example="  shardq cancel JOB",
    )
    p.add_argument("job", help="job id")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=cmd_cancel)

    p = add_command(
        sub,
        "retry",
        help="re-enqueue a job's failed shards with fresh deduplication ids; the job resumes",
        example="  shardq retry JOB --wait",
    )
    p.add_argument("job", help="job id")
    p.add_argument("--wait", action="store_true", help="then watch the job")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls with --wait")
    p.add_argument("--timeout", type=float, default=None, help="stop waiting after this many seconds")
    p.add_argument(
        "--traceback", action="store_true", help="show failed tasks' tracebacks, not one line each"
    )
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=cmd_retry)
