"""The ``shardq`` command line.

``shardq worker`` polls the task queue and trains. Every command finds the stack by
``--stack`` / ``SHARDQ_STACK`` (default ``shardq``), credentials and region by the
standard AWS chain, and the endpoint by ``--endpoint-url`` / ``AWS_ENDPOINT_URL`` (the
local cloud prints it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

DEFAULT_STACK = "shardq"


class CliError(RuntimeError):
    """A user-facing error: printed without a traceback, exit code 2."""


def session_client(service: str, args: argparse.Namespace) -> Any:
    """A boto3 client for ``service`` honouring --region and --endpoint-url."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session(region_name=args.region).client(
        service,
        endpoint_url=args.endpoint_url,
        config=Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32),
    )


def stack_outputs(args: argparse.Namespace) -> dict[str, str]:
    """The stack's outputs by key (TaskQueueUrl, ResultsQueueUrl, JobTableName, ...)."""
    cfn = session_client("cloudformation", args)
    try:
        stacks = cfn.describe_stacks(StackName=args.stack)["Stacks"]
    except Exception as exc:
        raise CliError(
            f"cannot read stack '{args.stack}': {exc}. Deploy it (make deploy, or shardq local up) or pass "
            "--stack NAME / SHARDQ_STACK, or give the queue URLs directly"
        ) from exc
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


def gpu_count() -> int:
    """GPUs this machine offers (CUDA_VISIBLE_DEVICES, else nvidia-smi), at least 1 slot."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return max(1, len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
            return max(1, sum(1 for line in out.splitlines() if line.startswith("GPU ")))
        except (OSError, subprocess.SubprocessError):
            return 1
    return 1


def cmd_worker(args: argparse.Namespace) -> int:
    """Poll the task queue and run the training function, one task per GPU."""
    from shardq.worker.logs import configure
    from shardq.worker.runtime import Worker
    from shardq.worker.supervisor import serve

    configure(args.log_level, json_lines=args.log_format == "json")
    needed = (args.task_queue_url, args.results_queue_url, args.job_table)
    outputs = stack_outputs(args) if not all(needed) else {}
    task_url = args.task_queue_url or outputs.get("TaskQueueUrl")
    results_url = args.results_queue_url or outputs.get("ResultsQueueUrl")
    table = args.job_table or outputs.get("JobTableName")
    if not task_url or not results_url:
        raise CliError("no task/results queue: pass --task-queue-url and --results-queue-url, or --stack")
    # Entrypoints like examples.linear:train resolve from the directory the worker runs in.
    sys.path.insert(0, os.getcwd())
    sqs = session_client("sqs", args)
    visibility = args.visibility_timeout or int(
        sqs.get_queue_attributes(QueueUrl=task_url, AttributeNames=["VisibilityTimeout"])["Attributes"][
            "VisibilityTimeout"
        ]
    )
    concurrency = args.concurrency or gpu_count()
    base_id = args.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    workers = [
        Worker(
            sqs=session_client("sqs", args),
            s3=session_client("s3", args),
            ddb=session_client("dynamodb", args) if table else None,
            job_table=table,
            task_queue_url=task_url,
            results_queue_url=results_url,
            entrypoint=args.entrypoint,
            wait_s=args.wait_seconds,
            visibility_s=visibility,
            worker_id=f"{base_id}-{i}",
        )
        for i in range(concurrency)
    ]
    import logging

    logging.getLogger("shardq.worker").info(
        "worker started",
        extra={"concurrency": concurrency, "task_queue_url": task_url, "entrypoint": args.entrypoint},
    )
    return serve(workers, grace_s=args.grace_seconds, max_tasks=args.max_tasks)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="shardq", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stack", default=os.environ.get("SHARDQ_STACK", DEFAULT_STACK), help="stack name")
    parser.add_argument("--region", default=None, help="AWS region (default: the AWS chain)")
    parser.add_argument(
        "--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"), help="endpoint, e.g. the local cloud's"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", help="poll the task queue and train")
    env = os.environ.get
    w.add_argument("--task-queue-url", default=env("SHARDQ_TASK_QUEUE_URL"))
    w.add_argument("--results-queue-url", default=env("SHARDQ_RESULTS_QUEUE_URL"))
    w.add_argument("--job-table", default=env("SHARDQ_JOB_TABLE"), help="for skipping cancelled jobs' tasks")
    w.add_argument(
        "--entrypoint", default=env("SHARDQ_ENTRYPOINT"), help="module:function, overriding each task's own"
    )
    w.add_argument(
        "--concurrency",
        type=int,
        default=int(env("SHARDQ_CONCURRENCY", "0")),
        help="tasks at once (default: GPUs)",
    )
    w.add_argument(
        "--visibility-timeout", type=int, default=0, help="heartbeat lease, s (default: the queue's)"
    )
    w.add_argument("--wait-seconds", type=int, default=20, help="long-poll wait (1..20)")
    w.add_argument("--grace-seconds", type=float, default=20.0, help="time running tasks get on SIGTERM")
    w.add_argument("--max-tasks", type=int, default=None, help="exit after this many tasks per slot")
    w.add_argument("--worker-id", default=env("SHARDQ_WORKER_ID"))
    w.add_argument("--log-level", default=env("LOG_LEVEL", "INFO"))
    w.add_argument("--log-format", choices=("json", "text"), default="json")
    w.set_defaults(func=cmd_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shardq`` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"shardq: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
