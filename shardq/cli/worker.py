"""``shardq worker``: poll the task queue and run the training function, one task per GPU."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from shardq.cli.common import CliError, gpu_count, session_client, stack_outputs


def cmd_worker(args: argparse.Namespace) -> int:
    """Poll the task queue and run the training function, one task per GPU."""
    from shardq.worker.logs import configure
    from shardq.worker.protection import TaskProtection
    from shardq.worker.runtime import Worker, max_receive_count_of
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
    # One look at the queue for every slot: its lease (unless given) and its maxReceiveCount.
    attrs = session_client("sqs", args).get_queue_attributes(
        QueueUrl=task_url, AttributeNames=["VisibilityTimeout", "RedrivePolicy"]
    )["Attributes"]
    visibility = args.visibility_timeout or int(attrs["VisibilityTimeout"])
    max_receive_count = max_receive_count_of(attrs)
    concurrency = args.concurrency or gpu_count()
    # On ECS (ECS_AGENT_URI set) a busy worker protects its task from scale-in; elsewhere a no-op.
    protection = TaskProtection.from_environment()
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
            max_receive_count=max_receive_count,
            worker_id=f"{base_id}-{i}",
            on_task_start=protection.task_started if protection.enabled else None,
            on_task_end=protection.task_finished if protection.enabled else None,
        )
        for i in range(concurrency)
    ]
    logging.getLogger("shardq.worker").info(
        "worker started",
        extra={
            "concurrency": concurrency,
            "task_queue_url": task_url,
            "entrypoint": args.entrypoint,
            "scale_in_protection": protection.enabled,
        },
    )
    return serve(workers, grace_s=args.grace_seconds, max_tasks=args.max_tasks)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``worker`` command."""
    env = os.environ.get
    w = sub.add_parser("worker", help="poll the task queue and train")
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
