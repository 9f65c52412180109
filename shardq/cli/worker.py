"""``shardq worker``: poll the task queue and run the training function, one slot per GPU."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from typing import Any

from shardq.cli.common import CliError, add_command, stack_outputs
from shardq.worker.aws import DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_MODE
from shardq.worker.lease import DEFAULT_LEASE_S
from shardq.worker.stop import DEFAULT_IMDS_ENDPOINT, IMDS_ENV, SpotNotice, StopSignal, imds_endpoint
from shardq.worker.trust import ENV as ALLOW_ENV
from shardq.worker.trust import AllowList, AllowListError, allow_list

EXAMPLE = """\
  shardq worker --stack shardq --allow 'examples.*'  # one slot per GPU; runs examples.* only
  shardq worker --entrypoint mypkg.train:fit         # every task runs mypkg.train:fit (allow: mypkg.*)
  shardq worker --idle-exit 300 --max-tasks 50       # a Batch/SageMaker job: exits 0 when idle
  shardq worker --job-id run-42 --concurrency 4      # exits 0 once job run-42 is finished

exit codes: 0 stopped (signal, --max-tasks, --idle-exit, --job-id finished); 1 a slot died of an
unexpected error; 2 usage; 4 a fatal AWS error (access denied, missing queue/table/bucket, bad
credentials); 130 a second signal. Transient AWS errors are retried and never end the worker.

trust: a task names its function (module:function); the worker imports only modules --allow
names (default: --entrypoint's package) and reports any other task failed, importing nothing.
See docs/SECURITY.md."""


def _resources(args: argparse.Namespace) -> tuple[str, str, str | None]:
    """The task queue, results queue and job table: flags first, else the stack's outputs."""
    needed = (args.task_queue_url, args.results_queue_url, args.job_table)
    outputs = stack_outputs(args) if not all(needed) else {}
    task_url = args.task_queue_url or outputs.get("TaskQueueUrl")
    results_url = args.results_queue_url or outputs.get("ResultsQueueUrl")
    table = args.job_table or outputs.get("JobTableName")
    # The fast results queue (shardq.core.result_routes): flag or variable, else the stack's output;
    # none (a stack deployed before it) sends every result to the results queue.
    args.fast_results_queue_url = args.fast_results_queue_url or outputs.get("FastResultsQueueUrl")
    if not task_url or not results_url:
        raise CliError("no task/results queue: pass --task-queue-url and --results-queue-url, or --stack")
    if args.job_id and not table:
        raise CliError("--job-id needs the job table: pass --job-table or --stack")
    return task_url, results_url, table


def _allow(args: argparse.Namespace) -> AllowList:
    """The worker's allow-list: ``--allow`` (replacing ``$SHARDQ_ALLOW``), else ``--entrypoint``'s package.

    Raises ``AllowListError`` when there is none or a pattern is malformed.
    """
    return allow_list(args.allow or [os.environ.get(ALLOW_ENV, "")], args.entrypoint)


def _validate(args: argparse.Namespace) -> None:
    problems = []
    if args.idle_exit is not None and args.idle_exit <= 0:
        problems.append(f"--idle-exit must be > 0 seconds, got {args.idle_exit}")
    if args.max_tasks is not None and args.max_tasks < 1:
        problems.append(f"--max-tasks must be >= 1, got {args.max_tasks}")
    if args.concurrency < 0:
        problems.append(f"--concurrency must be >= 0 (0: one slot per GPU), got {args.concurrency}")
    if not 0 <= args.wait_seconds <= 20:
        problems.append(f"--wait-seconds must be 0..20 (SQS's long-poll limit), got {args.wait_seconds}")
    if args.aws_max_attempts < 1:
        problems.append(f"--aws-max-attempts must be >= 1, got {args.aws_max_attempts}")
    try:
        _allow(args)
    except AllowListError as exc:
        problems.append(str(exc))
    if problems:
        raise CliError("; ".join(problems))


def build_workers(args: argparse.Namespace, task_url: str, results_url: str, table: str | None) -> list[Any]:
    """One ``Worker`` per slot, each with its own clients and its own device, sharing one Activity."""
    from shardq.worker.aws import worker_client
    from shardq.worker.devices import assign, visible_devices
    from shardq.worker.protection import TaskProtection
    from shardq.worker.runtime import Activity, Worker, max_receive_count_of

    def client(service: str) -> Any:
        return worker_client(
            service,
            region=args.region,
            endpoint_url=args.endpoint_url,
            retry_mode=args.aws_retry_mode,
            max_attempts=args.aws_max_attempts,
        )

    # One look at the queue for every slot: its lease (unless given) and its maxReceiveCount.
    attrs = client("sqs").get_queue_attributes(
        QueueUrl=task_url, AttributeNames=["VisibilityTimeout", "RedrivePolicy"]
    )["Attributes"]
    devices = visible_devices()
    concurrency = args.concurrency or max(1, len(devices))
    if devices and concurrency > len(devices):
        logging.getLogger("shardq.worker").warning(
            "%d slots on %d GPU(s): slots share GPUs round robin", concurrency, len(devices)
        )
    # On ECS (ECS_AGENT_URI set) a busy worker protects its task from scale-in; elsewhere a no-op.
    protection = TaskProtection.from_environment()
    base_id = args.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    allow = _allow(args)
    activity = Activity()
    # One stop for every slot: SIGTERM or a Spot notice reaches each running task's ctx.should_stop.
    stop = StopSignal()
    price = worker_price(args)
    return [
        Worker(
            sqs=client("sqs"),
            s3=client("s3"),
            ddb=client("dynamodb") if table else None,
            job_table=table,
            task_queue_url=task_url,
            results_queue_url=results_url,
            fast_results_queue_url=getattr(args, "fast_results_queue_url", None),
            entrypoint=args.entrypoint,
            allow=allow,
            wait_s=args.wait_seconds,
            # The lease (shardq.worker.lease): short, so a vanished worker's task returns within a minute.
            visibility_s=args.visibility_timeout or min(DEFAULT_LEASE_S, int(attrs["VisibilityTimeout"])),
            max_receive_count=max_receive_count_of(attrs),
            worker_id=f"{base_id}-{i}",
            on_task_start=protection.task_started if protection.enabled else None,
            on_task_end=protection.task_finished if protection.enabled else None,
            device=device,
            activity=activity,
            stop_signal=stop,
            price_per_hour=price.per_hour,
        )
        for i, device in enumerate(assign(concurrency, devices))
    ]


def worker_price(args: argparse.Namespace) -> Any:
    """The price the worker's results carry (``shardq.worker.pricing``), logged once: the flag,
    else the instance type from the metadata (not asked with ``--spot-notice off``), else unpriced."""
    from shardq.worker.pricing import resolve

    try:
        imds = None if args.spot_notice == "off" else imds_endpoint(args.imds_endpoint)
        price = resolve(args.price_per_hour, imds)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    logging.getLogger("shardq.worker").info(
        "worker price %s/h (%s)" if price.priced else "worker unpriced (%s%s)",
        *((f"${price.per_hour:g}", price.source) if price.priced else ("", price.source)),
        extra={"price_per_hour": price.per_hour, "price_source": price.source},
    )
    return price


def cmd_worker(args: argparse.Namespace) -> int:
    """Poll the task queue and run the training function, one slot per GPU."""
    from shardq.core.jobstore import JobStore
    from shardq.worker.logs import configure
    from shardq.worker.supervisor import JobWatch, serve

    configure(args.log_level, json_lines=args.log_format == "json")
    _validate(args)
    task_url, results_url, table = _resources(args)
    # Entrypoints like examples.linear:train resolve from the directory the worker runs in.
    sys.path.insert(0, os.getcwd())
    workers = build_workers(args, task_url, results_url, table)
    watch = JobWatch(JobStore(table, workers[0].ddb), args.job_id) if args.job_id and table else None
    logging.getLogger("shardq.worker").info(
        "worker started",
        extra={
            "concurrency": len(workers),
            "devices": [w.device.device for w in workers],
            "task_queue_url": task_url,
            "entrypoint": args.entrypoint,
            "allow": str(workers[0].allow),
            "idle_exit_s": args.idle_exit,
            "job_ids": args.job_id,
            "scale_in_protection": workers[0].on_task_start is not None,
        },
    )
    # On EC2 a Spot interruption notice (and, if asked, a rebalance recommendation) stops the
    # worker like SIGTERM, two minutes ahead; off EC2 the poller gives up quietly (shardq.worker.stop).
    notice = SpotNotice(
        workers[0].stop_signal,
        imds_endpoint(args.imds_endpoint),
        rebalance=args.stop_on_rebalance,
        mode=args.spot_notice,
    ).start()
    try:
        return serve(
            workers,
            grace_s=args.grace_seconds,
            max_tasks=args.max_tasks,
            idle_exit_s=args.idle_exit,
            watch=watch,
        )
    finally:
        notice.close()


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``worker`` command."""
    env = os.environ.get
    w = add_command(
        sub,
        "worker",
        help="poll the task queue and train",
        example=EXAMPLE,
        description="Poll the task queue and run the training function, one slot per GPU.",
    )
    w.add_argument("--task-queue-url", default=env("SHARDQ_TASK_QUEUE_URL"))
    w.add_argument("--results-queue-url", default=env("SHARDQ_RESULTS_QUEUE_URL"))
    w.add_argument(
        "--fast-results-queue-url",
        default=env("SHARDQ_FAST_RESULTS_QUEUE_URL"),
        help="zero-window queue for reduce results and small rounds' results (default: the stack's "
        "FastResultsQueueUrl); 'off' sends every result to --results-queue-url",
    )
    w.add_argument("--job-table", default=env("SHARDQ_JOB_TABLE"), help="for skipping cancelled jobs' tasks")
    w.add_argument(
        "--entrypoint", default=env("SHARDQ_ENTRYPOINT"), help="module:function, overriding each task's own"
    )
    w.add_argument(
        "--allow",
        action="append",
        default=None,
        metavar="PATTERNS",
        help="modules whose functions tasks may run, comma-separated, repeatable: 'pkg.*' (a package "
        "and all under it), 'pkg.mod' (one module), '*' (anything importable). A task naming another "
        f"is reported failed, nothing imported. Default: ${ALLOW_ENV}, else --entrypoint's package",
    )
    w.add_argument(
        "--concurrency",
        type=int,
        default=int(env("SHARDQ_CONCURRENCY", "0")),
        help="slots (tasks at once); default: one per visible GPU (CUDA_VISIBLE_DEVICES / nvidia-smi), "
        "each slot pinned to its own GPU (ctx.device)",
    )
    w.add_argument(
        "--visibility-timeout",
        type=int,
        default=0,
        help="task lease, s: the receive asks for it, a heartbeat renews it every third; a vanished "
        f"worker's task returns after at most this long (default {DEFAULT_LEASE_S}; the queue's if shorter)",
    )
    w.add_argument("--wait-seconds", type=int, default=20, help="long-poll wait (0..20)")
    w.add_argument(
        "--grace-seconds",
        type=float,
        default=float(env("SHARDQ_GRACE_SECONDS") or 90.0),
        help="time running tasks get on SIGTERM or a Spot notice to checkpoint and return, before they "
        "are released anyway (default 90: keep it under the container's stop timeout, 120 s on the "
        "stack's fleet, and the two-minute Spot notice)",
    )
    w.add_argument(
        "--spot-notice",
        choices=("auto", "on", "off"),
        default=env("SHARDQ_SPOT_NOTICE", "auto"),
        help="poll the instance metadata (IMDSv2) for a Spot interruption notice every 5 s and stop "
        "like on SIGTERM; auto: only where the metadata service answers (default)",
    )
    w.add_argument(
        "--imds-endpoint",
        default=None,
        help=f"instance metadata address (default: ${IMDS_ENV}, else {DEFAULT_IMDS_ENDPOINT})",
    )
    w.add_argument(
        "--stop-on-rebalance",
        action="store_true",
        default=env("SHARDQ_STOP_ON_REBALANCE", "") in ("1", "true"),
        help="treat an EC2 rebalance recommendation (an earlier, less certain warning) as a stop too",
    )
    w.add_argument(
        "--price-per-hour",
        type=float,
        # A string default goes through type=float, so a bad $SHARDQ_PRICE_PER_HOUR is a usage
        # error naming the flag rather than a traceback when the parser is built.
        default=env("SHARDQ_PRICE_PER_HOUR") or None,
        metavar="USD",
        help="what an hour of this worker costs ($SHARDQ_PRICE_PER_HOUR); its results carry it and "
        "jobs count their cost (budget_usd). Default: the instance type's on-demand price from the "
        "instance metadata and shardq/core/instance_prices.json (a Spot instance too: an upper "
        "bound), else 0 (unpriced)",
    )
    w.add_argument("--max-tasks", type=int, default=None, help="exit 0 after this many tasks per slot")
    w.add_argument(
        "--idle-exit",
        type=float,
        default=float(env("SHARDQ_IDLE_EXIT") or 0) or None,
        metavar="SECONDS",
        help="exit 0 after this long with no task on any slot (polls that fail do not count as idle)",
    )
    w.add_argument(
        "--job-id",
        action="append",
        default=None,
        metavar="JOB_ID",
        help="a job this worker was started for (repeatable): exit 0 once all are finished. The "
        "worker still runs any job's task meanwhile (a FIFO queue cannot be filtered by job)",
    )
    w.add_argument(
        "--aws-retry-mode",
        choices=("standard", "adaptive"),
        default=env("AWS_RETRY_MODE", DEFAULT_RETRY_MODE),
        help="botocore retry mode of every AWS call (default: standard)",
    )
    w.add_argument(
        "--aws-max-attempts",
        type=int,
        default=int(env("AWS_MAX_ATTEMPTS", str(DEFAULT_MAX_ATTEMPTS))),
        help=f"attempts per AWS call, the first included, before the slot backs off ({DEFAULT_MAX_ATTEMPTS})",
    )
    w.add_argument("--worker-id", default=env("SHARDQ_WORKER_ID"))
    w.add_argument("--log-level", default=env("LOG_LEVEL", "INFO"))
    w.add_argument("--log-format", choices=("json", "text"), default="json")
    w.set_defaults(func=cmd_worker)
