"""The worker loop: long-poll a task, run the training function, upload, post the result, delete.

Order matters: the result is posted *before* the task is deleted, so a crash in
between yields a duplicate result (which the aggregator drops), never a lost one.
While a task runs, a heartbeat thread keeps extending its visibility.
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

from shardq.core.contracts import ShardResult, ShardTask, ValidationError
from shardq.worker.reduce import average_models

log = logging.getLogger("shardq.worker")
DEFAULT_MAX_RECEIVE_COUNT = 5


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → ``(bucket, key)``."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def resolve(entrypoint: str, task_type: str) -> Callable[[ShardTask, TaskContext], dict[str, Any]] | None:
    """The function to run: ``module:function`` for train, the module's ``reduce`` (or None) for reduce."""
    module_name, _, func = entrypoint.partition(":")
    module = importlib.import_module(module_name)
    if task_type == "reduce":
        return getattr(module, "reduce", None)
    fn = getattr(module, func, None)
    if fn is None:
        raise AttributeError(f"entrypoint {entrypoint!r}: module {module_name} has no function {func!r}")
    return fn


@dataclass
class TaskContext:
    """What a training function gets besides the task.

    Attributes
    ----------
    work_dir:
        Scratch space, deleted after the task.
    output_dir:
        Everything saved here is uploaded under the task's ``output_prefix``.
    init_model_path:
        The round's global model, downloaded (None in round 0 without ``model.init_uri``).
    input_models:
        For reduce tasks: ``(path, num_samples)`` of each shard model.
    """

    work_dir: Path
    output_dir: Path
    init_model_path: Path | None
    logger: logging.Logger
    progress: Callable[[float], None]
    input_models: list[tuple[Path, int]] = field(default_factory=list)


@dataclass
class Worker:
    """Polls one task queue and posts to one results queue.

    Parameters
    ----------
    sqs, s3:
        boto3 clients.
    task_queue_url, results_queue_url:
        The stack's queues.
    visibility_s:
        The visibility the heartbeat keeps ahead of the running task.
    """

    sqs: Any
    s3: Any
    task_queue_url: str
    results_queue_url: str
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    wait_s: int = 20
    visibility_s: int = 300
    max_receive_count: int | None = None
    tasks_done: int = 0

    def __post_init__(self) -> None:
        if self.max_receive_count is None:
            attrs = self.sqs.get_queue_attributes(
                QueueUrl=self.task_queue_url, AttributeNames=["RedrivePolicy"]
            )
            policy = json.loads(attrs.get("Attributes", {}).get("RedrivePolicy", "{}") or "{}")
            self.max_receive_count = int(policy.get("maxReceiveCount", DEFAULT_MAX_RECEIVE_COUNT))

    def run(self, stop: threading.Event, *, max_tasks: int | None = None) -> int:
        """Poll until ``stop`` is set (or ``max_tasks`` are done); returns tasks handled."""
        while not stop.is_set() and (max_tasks is None or self.tasks_done < max_tasks):
            self.poll_once()
        return self.tasks_done

    def poll_once(self) -> bool:
        """One long poll; handles the task it gets. True when a task was handled."""
        resp = self.sqs.receive_message(
            QueueUrl=self.task_queue_url,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=self.wait_s,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        for message in resp.get("Messages", []):
            self.handle(message)
            self.tasks_done += 1
            return True
        return False

    def handle(self, message: dict[str, Any]) -> None:
        """Run one task message to its outcome."""
        receipt = message["ReceiptHandle"]
        receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        try:
            task = ShardTask.from_json(message["Body"])
        except ValidationError:
            # Not ours to run; leave it to the redrive policy (it ends in the DLQ, visible to operators).
            log.exception("malformed task body; leaving it for the DLQ")
            return
        started = time.monotonic()
        stop_beat = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(receipt, stop_beat), daemon=True)
        beat.start()
        try:
            with tempfile.TemporaryDirectory(prefix="shardq-task-") as tmp:
                outcome = self._run(task, Path(tmp))
            result = ShardResult(
                job_id=task.job_id,
                round=task.round,
                shard_id=task.shard_id,
                task_type=task.task_type,
                status="succeeded",
                metrics={k: float(v) for k, v in outcome.get("metrics", {}).items()},
                num_samples=int(outcome.get("num_samples", 0)),
                artifact_uri=outcome.get("artifact_uri"),
                duration_s=round(time.monotonic() - started, 3),
                worker_id=self.worker_id,
                attempt=receives,
            )
        except Exception as exc:
            log.exception("task %s failed on attempt %d", task.key, receives)
            if receives < (self.max_receive_count or DEFAULT_MAX_RECEIVE_COUNT):
                stop_beat.set()
                beat.join()
                # Give it back at once so the retry does not wait out the visibility timeout.
                self.sqs.change_message_visibility(
                    QueueUrl=self.task_queue_url, ReceiptHandle=receipt, VisibilityTimeout=0
                )
                return
            result = ShardResult(
                job_id=task.job_id,
                round=task.round,
                shard_id=task.shard_id,
                task_type=task.task_type,
                status="failed",
                duration_s=round(time.monotonic() - started, 3),
                worker_id=self.worker_id,
                attempt=receives,
                error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"[-4000:],
            )
        finally:
            stop_beat.set()
        beat.join()
        # Result first, then delete: a crash between the two duplicates a result, never loses one.
        self.sqs.send_message(QueueUrl=self.results_queue_url, MessageBody=result.to_json())
        self.sqs.delete_message(QueueUrl=self.task_queue_url, ReceiptHandle=receipt)

    def _heartbeat(self, receipt: str, stop: threading.Event) -> None:
        interval = max(1.0, self.visibility_s / 3)
        while not stop.wait(interval):
            try:
                self.sqs.change_message_visibility(
                    QueueUrl=self.task_queue_url, ReceiptHandle=receipt, VisibilityTimeout=self.visibility_s
                )
            except Exception:
                log.warning("heartbeat failed; the task may be redelivered", exc_info=True)

    def _download(self, uri: str, dest: Path) -> Path:
        bucket, key = split_s3(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.s3.download_file(bucket, key, str(dest))
        return dest

    def _run(self, task: ShardTask, tmp: Path) -> dict[str, Any]:
        out_dir = tmp / "output"
        out_dir.mkdir()
        init = None
        if task.init_model_uri:
            init = self._download(
                task.init_model_uri, tmp / "init" / Path(urlparse(task.init_model_uri).path).name
            )
        ctx = TaskContext(
            work_dir=tmp,
            output_dir=out_dir,
            init_model_path=init,
            logger=log.getChild(task.key),
            progress=lambda fraction: None,
        )
        fn = resolve(task.entrypoint, task.task_type)
        if task.task_type == "reduce":
            assert task.inputs_uri is not None
            bucket, key = split_s3(task.inputs_uri)
            inputs = json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            for i, m in enumerate(inputs["models"]):
                name = Path(urlparse(m["artifact_uri"]).path).name
                ctx.input_models.append(
                    (self._download(m["artifact_uri"], tmp / "inputs" / str(i) / name), m["num_samples"])
                )
            if fn is None:
                average_models([p for p, _ in ctx.input_models], [w for _, w in ctx.input_models], out_dir)
                outcome: dict[str, Any] = {"num_samples": inputs["total_samples"]}
            else:
                outcome = dict(fn(task, ctx) or {})
        else:
            assert fn is not None
            outcome = dict(fn(task, ctx) or {})
        uploaded = self._upload(out_dir, task.output_prefix)
        if "artifact_uri" not in outcome and uploaded:
            outcome["artifact_uri"] = uploaded[0] if len(uploaded) == 1 else task.output_prefix
        return outcome

    def _upload(self, out_dir: Path, prefix: str) -> list[str]:
        bucket, key_prefix = split_s3(prefix)
        uris = []
        for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
            key = key_prefix + path.relative_to(out_dir).as_posix()
            self.s3.upload_file(str(path), bucket, key)  # multipart above 8 MiB (boto3 transfer)
            uris.append(f"s3://{bucket}/{key}")
        return uris
