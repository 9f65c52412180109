"""The worker loop: long-poll a task, run the training function, upload, post the result, delete.

Guarantees, in the order a task meets them:

* **Long polling** (20 s): an idle worker makes at most 3 ReceiveMessage calls a minute.
* **Cancellation**: a task whose job is CANCELLED or already finished is deleted unrun.
* **Heartbeat**: while the function runs, a thread keeps the task invisible
  (ChangeMessageVisibility ahead of expiry), up to SQS's 12-hour ceiling. A task that
  would outlive the ceiling is reported failed with a clear message and deleted, rather
  than silently redelivered and run twice.
* **Result before delete**: a crash between the two duplicates a result (the aggregator
  drops it), never loses one.
* **Retries**: an exception releases the task at once (visibility 0) unless this was its
  last attempt (receive count ≥ the queue's maxReceiveCount): then a failed result is
  posted and the task deleted, so the job learns why.
* **Shutdown** (SIGTERM/SIGINT, see ``Supervisor``): stop polling, let running tasks finish
  within a grace period, then release their visibility so other workers take them at once.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from shardq.core.contracts import TERMINAL_STATUSES, ShardResult, ShardTask, ValidationError
from shardq.core.planning import split_s3
from shardq.worker.reduce import average_models

log = logging.getLogger("shardq.worker")
DEFAULT_MAX_RECEIVE_COUNT = 5
# SQS keeps a received message invisible for at most 12 hours in total.
VISIBILITY_CEILING_S = 12 * 3600
# Stop extending this long before the ceiling, so the failure is reported while we hold the task.
CEILING_MARGIN_S = 120


def max_receive_count_of(queue_attributes: dict[str, str]) -> int:
    """The queue's maxReceiveCount from its attributes (5 without a redrive policy)."""
    policy = json.loads(queue_attributes.get("RedrivePolicy") or "{}")
    return int(policy.get("maxReceiveCount", DEFAULT_MAX_RECEIVE_COUNT))


class EntrypointError(RuntimeError):
    """The training function cannot be loaded here: every attempt on this worker would fail alike."""


def resolve(entrypoint: str, task_type: str) -> Callable[..., Any] | None:
    """The function to run: ``module:function`` for train, the module's ``reduce`` (or None) for reduce.

    Raises ``EntrypointError`` when the module does not import or lacks the function.
    """
    module_name, _, func = entrypoint.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise EntrypointError(
            f"entrypoint {entrypoint!r} cannot be loaded on this worker: {type(exc).__name__}: {exc}. "
            "Fix the request's entrypoint, or install the module in the worker's environment or image"
        ) from exc
    if task_type == "reduce":
        return getattr(module, "reduce", None)
    fn = getattr(module, func, None)
    if fn is None:
        raise EntrypointError(
            f"entrypoint {entrypoint!r}: module {module_name} has no function {func!r}; fix the entrypoint"
        )
    return fn


class TaskLogAdapter(logging.LoggerAdapter):
    """Puts job_id, round and shard_id on every line a task logs."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs.setdefault("extra", {}).update(self.extra or {})
        return msg, kwargs


@dataclass
class TaskContext:
    """What a training function gets besides the task.

    Attributes
    ----------
    data:
        The task's data slice: ``{"uri", "start", "end"}`` or ``{"uri"?, "files": [...]}``.
    work_dir:
        Scratch space, deleted after the task.
    output_dir:
        Everything saved here is uploaded under the task's ``output_prefix``.
    init_model_path:
        The round's global model, downloaded (None in round 0 without ``model.init_uri``).
    input_models:
        For reduce tasks: ``(path, num_samples)`` of each shard model.
    logger:
        A logger whose lines carry job_id, round and shard_id.
    """

    data: dict[str, Any]
    work_dir: Path
    output_dir: Path
    init_model_path: Path | None
    logger: logging.LoggerAdapter
    fetch: Callable[[str], Path]
    progress_sink: Callable[[float], None] = lambda fraction: None
    input_models: list[tuple[Path, int]] = field(default_factory=list)

    def progress(self, fraction: float) -> None:
        """Report progress in [0, 1] (logged at most every 10 %)."""
        self.progress_sink(min(1.0, max(0.0, float(fraction))))

    def files(self) -> list[Path]:
        """The shard's files as local paths (``s3://`` ones downloaded into the work dir)."""
        return [self.fetch(f) for f in self.data.get("files", [])]


class TaskAbandoned(RuntimeError):
    """The worker gave the task up (shutdown or ceiling); its outcome must not be posted."""


@dataclass
class Lease:
    """One received task: its receipt, receive count, and the state the heartbeat keeps."""

    receipt: str
    receives: int
    received_at: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    abandoned: threading.Event = field(default_factory=threading.Event)


@dataclass
class Worker:
    """Polls one task queue and posts to one results queue; run several for several GPUs.

    Parameters
    ----------
    sqs, s3:
        boto3 clients.
    task_queue_url, results_queue_url:
        The stack's queues.
    ddb, job_table:
        For the cancellation check (optional: without them every task runs).
    entrypoint:
        Overrides the task's own ``entrypoint`` (``module:function``) when set.
    visibility_s:
        The visibility the heartbeat keeps ahead of the running task.
    on_task_start, on_task_end:
        Called before a task runs and after its outcome is posted and the message deleted (or it
        was released); errors are logged, never raised. ``shardq worker`` wires ECS task scale-in
        protection here.
    """

    sqs: Any
    s3: Any
    task_queue_url: str
    results_queue_url: str
    ddb: Any = None
    job_table: str | None = None
    entrypoint: str | None = None
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    wait_s: int = 20
    visibility_s: int = 300
    max_receive_count: int | None = None
    tasks_done: int = 0
    current: Lease | None = None
    on_task_start: Callable[[], None] | None = None
    on_task_end: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        if self.max_receive_count is None:
            attrs = self.sqs.get_queue_attributes(
                QueueUrl=self.task_queue_url, AttributeNames=["RedrivePolicy"]
            )
            self.max_receive_count = max_receive_count_of(attrs.get("Attributes", {}))

    def run(self, stop: threading.Event, *, max_tasks: int | None = None) -> int:
        """Poll until ``stop`` is set (or ``max_tasks`` are done); returns tasks handled."""
        while not stop.is_set() and (max_tasks is None or self.tasks_done < max_tasks):
            self.poll_once(stop)
        return self.tasks_done

    def poll_once(self, stop: threading.Event | None = None) -> bool:
        """One long poll; handles the task it gets. True when a task was handled."""
        resp = self.sqs.receive_message(
            QueueUrl=self.task_queue_url,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=self.wait_s,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        for message in resp.get("Messages", []):
            if stop is not None and stop.is_set():
                # Shutting down: give it straight back rather than start it.
                self._release(message["ReceiptHandle"])
                return False
            self.handle(message)
            self.tasks_done += 1
            return True
        return False

    def release_current(self) -> bool:
        """Give the running task back to the queue now (shutdown). True when there was one."""
        lease = self.current
        if lease is None or lease.done.is_set():
            return False
        lease.abandoned.set()
        self._release(lease.receipt)
        return True

    def _release(self, receipt: str) -> None:
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.task_queue_url, ReceiptHandle=receipt, VisibilityTimeout=0
            )
        except Exception:
            log.warning("could not release a task; it returns after its visibility timeout", exc_info=True)

    def handle(self, message: dict[str, Any]) -> None:
        """Run one task message to its outcome."""
        lease = Lease(
            receipt=message["ReceiptHandle"],
            receives=int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
        )
        try:
            task = ShardTask.from_json(message["Body"])
        except ValidationError:
            # Not runnable by anyone: leave it to the redrive policy (the DLQ, where alarms see it).
            log.exception("malformed task body; leaving it for the DLQ")
            return
        tlog = TaskLogAdapter(log, {"job_id": task.job_id, "round": task.round, "shard_id": task.shard_id})
        if self._job_finished(task.job_id):
            tlog.info("job is cancelled or finished; dropping task %s unrun", task.key)
            self.sqs.delete_message(QueueUrl=self.task_queue_url, ReceiptHandle=lease.receipt)
            return
        # Hooks around the whole lease (run, post, delete): on ECS they hold the task's scale-in
        # protection (shardq.worker.protection), so a scale-in never stops a worker mid-shard.
        self._hook(self.on_task_start, "on_task_start")
        try:
            self.current = lease
            beat = threading.Thread(
                target=self._heartbeat, args=(lease, task, tlog), daemon=True, name="heartbeat"
            )
            beat.start()
            started = time.monotonic()
            try:
                result = self._outcome(task, lease, tlog, started)
            finally:
                lease.done.set()
                beat.join()
                self.current = None
            if result is None or lease.abandoned.is_set():
                return
            # Result first, then delete: a crash between the two duplicates a result, never loses one.
            self.sqs.send_message(QueueUrl=self.results_queue_url, MessageBody=result.to_json())
            self.sqs.delete_message(QueueUrl=self.task_queue_url, ReceiptHandle=lease.receipt)
            tlog.info(
                "task %s %s in %.2f s (attempt %d)",
                task.key,
                result.status,
                result.duration_s,
                lease.receives,
                extra={"status": result.status, "duration_s": result.duration_s, "attempt": lease.receives},
            )
        finally:
            self._hook(self.on_task_end, "on_task_end")

    @staticmethod
    def _hook(hook: Callable[[], None] | None, name: str) -> None:
        if hook is None:
            return
        try:
            hook()
        except Exception:
            log.warning("%s hook failed; the task goes on", name, exc_info=True)

    def _outcome(
        self,
        task: ShardTask,
        lease: Lease,
        tlog: logging.LoggerAdapter,
        started: float,
    ) -> ShardResult | None:
        attempt = {"worker_id": self.worker_id, "attempt": lease.receives}
        try:
            with tempfile.TemporaryDirectory(prefix="shardq-task-") as tmp:
                outcome = self._run(task, Path(tmp), tlog)
            return ShardResult.for_task(
                task,
                "succeeded",
                metrics={k: float(v) for k, v in outcome.get("metrics", {}).items()},
                num_samples=int(outcome.get("num_samples", 0)),
                artifact_uri=outcome.get("artifact_uri"),
                duration_s=round(time.monotonic() - started, 3),
                **attempt,
            )
        except Exception as exc:
            if lease.abandoned.is_set():
                return None
            tlog.exception(
                "task %s failed on attempt %d of %d", task.key, lease.receives, self.max_receive_count
            )
            # A training function that cannot even be loaded fails every attempt the same way:
            # report it now instead of cycling the task through the remaining receives.
            permanent = isinstance(exc, EntrypointError)
            if not permanent and lease.receives < (self.max_receive_count or DEFAULT_MAX_RECEIVE_COUNT):
                lease.abandoned.set()
                # Give it back at once so the retry does not wait out the visibility timeout.
                self._release(lease.receipt)
                return None
            return ShardResult.for_task(
                task,
                "failed",
                duration_s=round(time.monotonic() - started, 3),
                error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"[-4000:],
                **attempt,
            )

    def _job_finished(self, job_id: str) -> bool:
        if self.ddb is None or not self.job_table:
            return False
        item = self.ddb.get_item(
            TableName=self.job_table,
            Key={"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": "JOB"}},
            ProjectionExpression="#s",
            ExpressionAttributeNames={"#s": "status"},
        ).get("Item")
        return item is not None and item["status"]["S"] in TERMINAL_STATUSES

    def _heartbeat(self, lease: Lease, task: ShardTask, tlog: logging.LoggerAdapter) -> None:
        """Extend visibility every third of it; at the 12-hour ceiling, fail the task cleanly."""
        interval = max(0.5, self.visibility_s / 3)
        while not lease.done.wait(interval):
            if lease.abandoned.is_set():
                return
            held = time.monotonic() - lease.received_at
            left = VISIBILITY_CEILING_S - held
            if left <= CEILING_MARGIN_S:
                lease.abandoned.set()
                self._ceiling_reached(lease, task, tlog, held)
                return
            try:
                self.sqs.change_message_visibility(
                    QueueUrl=self.task_queue_url,
                    ReceiptHandle=lease.receipt,
                    VisibilityTimeout=int(min(self.visibility_s, left)),
                )
            except Exception:
                tlog.warning("heartbeat failed; the task may be redelivered", exc_info=True)

    def _ceiling_reached(
        self,
        lease: Lease,
        task: ShardTask,
        tlog: logging.LoggerAdapter,
        held: float,
    ) -> None:
        error = (
            f"task ran {held / 3600:.2f} h, past SQS's 12-hour visibility ceiling: it would be redelivered "
            "and run twice. Split the dataset into more shards (sharding.shard_count) so each task "
            "finishes well within 12 hours."
        )
        tlog.error(error)
        result = ShardResult.for_task(
            task,
            "failed",
            worker_id=self.worker_id,
            attempt=lease.receives,
            duration_s=round(held, 3),
            error=error,
        )
        self.sqs.send_message(QueueUrl=self.results_queue_url, MessageBody=result.to_json())
        self.sqs.delete_message(QueueUrl=self.task_queue_url, ReceiptHandle=lease.receipt)

    def _download(self, uri: str, dest: Path) -> Path:
        bucket, key = split_s3(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.s3.download_file(bucket, key, str(dest))
        return dest

    def _fetcher(self, tmp: Path) -> Callable[[str], Path]:
        def fetch(uri: str) -> Path:
            if uri.startswith("s3://"):
                bucket, key = split_s3(uri)
                return self._download(uri, tmp / "data" / bucket / key)
            return Path(uri.removeprefix("file://"))

        return fetch

    def _run(self, task: ShardTask, tmp: Path, tlog: logging.LoggerAdapter) -> dict[str, Any]:
        out_dir = tmp / "output"
        out_dir.mkdir()
        init = None
        if task.init_model_uri:
            init = self._download(
                task.init_model_uri, tmp / "init" / Path(urlparse(task.init_model_uri).path).name
            )
        last = [-1.0]

        def progress(fraction: float) -> None:
            if fraction - last[0] >= 0.1 or fraction >= 1.0 > last[0]:
                last[0] = fraction
                tlog.info("progress %.0f%%", fraction * 100, extra={"progress": fraction})

        ctx = TaskContext(
            data=dict(task.data),
            work_dir=tmp,
            output_dir=out_dir,
            init_model_path=init,
            logger=tlog,
            fetch=self._fetcher(tmp),
            progress_sink=progress,
        )
        fn = resolve(self.entrypoint or task.entrypoint, task.task_type)
        if task.task_type == "reduce":
            if task.inputs_uri is None:
                raise ValueError(f"reduce task {task.key} has no inputs_uri")
            bucket, key = split_s3(task.inputs_uri)
            inputs = json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            for i, m in enumerate(inputs["models"]):
                name = Path(urlparse(m["artifact_uri"]).path).name
                path = self._download(m["artifact_uri"], tmp / "inputs" / str(i) / name)
                ctx.input_models.append((path, int(m["num_samples"])))
            if fn is None:
                average_models([p for p, _ in ctx.input_models], [w for _, w in ctx.input_models], out_dir)
                outcome: dict[str, Any] = {"num_samples": inputs["total_samples"]}
            else:
                outcome = dict(fn(task, ctx) or {})
        else:
            if fn is None:
                raise AttributeError(f"entrypoint {task.entrypoint!r} has no train function")
            outcome = dict(fn(task, ctx) or {})
        if task.task_type == "train" and task.kind != "map" and not any(out_dir.iterdir()):
            tlog.warning("the training function saved nothing under ctx.output_dir; no model to reduce")
        uploaded = self._upload(out_dir, task.output_prefix)
        if "artifact_uri" not in outcome and uploaded:
            outcome["artifact_uri"] = uploaded[0] if len(uploaded) == 1 else task.output_prefix
        return outcome

    def _upload(self, out_dir: Path, prefix: str) -> list[str]:
        bucket, key_prefix = split_s3(prefix)
        uris = []
        for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
            key = key_prefix + path.relative_to(out_dir).as_posix()
            self.s3.upload_file(str(path), bucket, key)  # boto3 switches to multipart above 8 MiB
            uris.append(f"s3://{bucket}/{key}")
        return uris
