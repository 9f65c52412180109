"""The worker loop: long-poll a task, run the training function, upload, post the result, delete.

Guarantees, in the order a task meets them:

* **Long polling** (20 s): an idle worker makes at most 3 ReceiveMessage calls a minute.
* **Cancellation** (``shardq.worker.drops``): a task whose job is CANCELLED or already finished is
  deleted unrun, and so is a ``data_parallel`` train task whose round already closed or was passed.
* **Time limit**: a task with ``timeout_s`` runs its function in a child process
  (``shardq.worker.isolation``); past the limit the process is killed and the task reported
  failed at once (no retry), naming ``task_timeout_seconds``; the slot goes on.
* **Lease and heartbeat** (``shardq.worker.lease``): the receive asks for a short lease (30 s) and,
  while the function runs, a thread renews it every third (ChangeMessageVisibility), up to SQS's
  12-hour ceiling, so a vanished worker's task returns within a minute. A lease lost to failing
  renewals stops the task (``ctx.should_stop``) and its outcome is not posted. A task that
  would outlive the ceiling is reported failed with a clear message and deleted, rather
  than silently redelivered and run twice.
* **Checkpoints and stops** (``shardq.worker.checkpoints``, ``.stop``): the task's latest good
  checkpoint is restored into ``ctx.resume_path``; ``ctx.save_checkpoint`` uploads one;
  ``ctx.should_stop`` is set by SIGTERM or a Spot notice, and a function that then returns
  ``ctx.stopped()`` has its task released, not reported: re-sent, so the release costs no
  receive toward the DLQ (``shardq.worker.release``; a crash still counts).
* **Result before delete**: a crash between the two duplicates a result (the aggregator
  drops it), never loses one.
* **Retries**: an exception releases the task at once (visibility 0) unless this was its
  last attempt (receive count ≥ the queue's maxReceiveCount): then a failed result is
  posted and the task deleted, so the job learns why.
* **Shutdown** (SIGTERM/SIGINT, see ``Supervisor``): stop polling, let running tasks finish
  within a grace period, then hand them back (re-sent, ``shardq.worker.release``) so other
  workers take them at once.
* **AWS errors** (``shardq.worker.aws``): botocore retries every call (standard/adaptive mode);
  an error that outlives those retries is logged, the slot backs off and polls again, and the
  task it held is left to its visibility timeout — no slot dies of it. Only a fatal error
  (access denied, a missing queue/table/bucket, bad credentials) stops the slot, and then the
  worker (``serve`` exits non-zero).
* **Model artifact** (``shardq.worker.artifacts``): the file named by ``ctx.model_path`` (else the
  one ``model.*`` file, else the only file) in ``ctx.output_dir`` travels as the result's
  ``model_uri``; the rest of the outputs are uploaded beside it. The default reduce
  (``shardq.worker.reduce_task``) streams the shard models into a running average.

The parts live beside this loop, each owning one concern: ``entrypoints`` (which function runs),
``artifacts``, ``reduce_task`` and ``task_setup`` (mixins of ``Worker``), ``release``, ``drops``, ``lease``,
``activity``. The names callers import from here are re-exported (``__all__``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from shardq.core import verdicts
from shardq.core.contracts import ShardResult, ShardTask, ValidationError
from shardq.core.enqueue import load_task
from shardq.core.jobstore import JobStore
from shardq.core.planning import split_s3  # re-exported: tests.chaos.harness imports it here
from shardq.core.result_routes import results_queue_for
from shardq.core.spend import BUDGET_DROP, Dropped
from shardq.worker import optuna_sampler, scratch
from shardq.worker.activity import Activity  # re-exported, like the names below: callers import them here
from shardq.worker.artifacts import model_file
from shardq.worker.aws import Backoff, FatalAwsError, describe, is_fatal
from shardq.worker.code import fingerprint as code_fingerprint
from shardq.worker.context import TaskContext, TaskLogAdapter
from shardq.worker.devices import CPU, SlotDevice
from shardq.worker.drops import drop_reason
from shardq.worker.entrypoints import EntrypointError, resolve
from shardq.worker.isolation import IsolatedTaskError, TaskAbandonedInChild, TaskTimeout, run_isolated
from shardq.worker.lease import (
    CEILING,
    CEILING_MARGIN_S,
    DEFAULT_LEASE_S,
    LOST,
    VISIBILITY_CEILING_S,
    Lease,
    TaskAbandoned,
    keep_leased,
)
from shardq.worker.reduce import ModelError, custom_reduce_conflict
from shardq.worker.reduce_task import ReduceTasks
from shardq.worker.release import RECEIVE_ATTRIBUTES, TaskRelease
from shardq.worker.stop import Stopped, StopSignal
from shardq.worker.strategies import needs_server_step
from shardq.worker.task_setup import TaskSetup
from shardq.worker.trust import AllowList

__all__ = [
    "Activity",
    "EntrypointError",
    "Lease",
    "TaskAbandoned",
    "TaskContext",
    "TaskLogAdapter",
    "Worker",
    "max_receive_count_of",
    "model_file",
    "resolve",
    "split_s3",
]

log = logging.getLogger("shardq.worker")
DEFAULT_MAX_RECEIVE_COUNT = 5
# AWS errors are logged as one line; anything else (a bug) with its traceback.
BotoErrors = (BotoCoreError, ClientError)


def max_receive_count_of(queue_attributes: dict[str, str]) -> int:
    """The queue's maxReceiveCount from its attributes (5 without a redrive policy)."""
    policy = json.loads(queue_attributes.get("RedrivePolicy") or "{}")
    return int(policy.get("maxReceiveCount", DEFAULT_MAX_RECEIVE_COUNT))


@dataclass
class Worker(ReduceTasks, TaskSetup, TaskRelease):
    """Polls one task queue and posts to one results queue; one per slot (GPU).

    Parameters
    ----------
    sqs, s3:
        boto3 clients (``shardq.worker.aws.worker_client`` gives them botocore's retry modes).
    task_queue_url, results_queue_url:
        The stack's queues.
    fast_results_queue_url:
        The stack's zero-window results queue: reduce results and small rounds' results go there
        (``shardq.core.result_routes``); ``None`` or ``"off"`` sends every result to ``results_queue_url``.
    ddb, job_table:
        For the cancellation and closed-round checks, through ``JobStore.get_job`` (optional:
        without them every task runs).
    entrypoint:
        Overrides the task's own ``entrypoint`` (``module:function``) when set.
    allow:
        The modules whose functions this worker may import and run (``shardq worker --allow``);
        default: ``entrypoint``'s top-level package. Without either the worker refuses to start: a
        task would otherwise choose the code it runs.
    visibility_s:
        The task lease: what the receive asks for and the heartbeat keeps ahead of the running task
        (``shardq.worker.lease``); default the smaller of ``DEFAULT_LEASE_S`` and the queue's own
        (read with ``max_receive_count``; when that is given and this is not, the receive leaves
        the first lease to the queue and the heartbeat renews ``DEFAULT_LEASE_S``).
    stop_signal:
        The worker-wide stop (SIGTERM, a Spot notice) its tasks read as ``ctx.should_stop``.
    device:
        The slot's accelerator, handed to the training function as ``ctx.device``.
    activity:
        Shared by the slots of one worker to tell when all are idle (``--idle-exit``).
    on_task_start, on_task_end:
        Called before a task runs and after its outcome is posted and the message deleted (or it
        was released); errors are logged, never raised. ``shardq worker`` wires ECS task scale-in
        protection here.
    """

    sqs: Any
    s3: Any
    task_queue_url: str
    results_queue_url: str
    fast_results_queue_url: str | None = None
    ddb: Any = None
    job_table: str | None = None
    entrypoint: str | None = None
    allow: AllowList | None = None
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    wait_s: int = 20
    visibility_s: int | None = None
    max_receive_count: int | None = None
    tasks_done: int = 0
    current: Lease | None = None
    on_task_start: Callable[[], None] | None = None
    on_task_end: Callable[[], None] | None = None
    device: SlotDevice = field(default_factory=lambda: SlotDevice(CPU))
    activity: Activity = field(default_factory=Activity)
    backoff: Backoff = field(default_factory=Backoff)
    fatal: BaseException | None = None
    errors: int = 0
    stop_signal: StopSignal = field(default_factory=StopSignal)
    # USD per hour of this worker's time, carried by its results (0: unpriced; shardq.worker.pricing).
    price_per_hour: float = 0.0

    def __post_init__(self) -> None:
        if self.allow is None:
            if not self.entrypoint:
                raise ValueError(
                    "Worker: pass allow=AllowList.parse('pkg.*') (the modules it may run) or entrypoint="
                )
            self.allow = AllowList.for_entrypoint(self.entrypoint)
        self.store = JobStore(self.job_table, self.ddb) if self.ddb is not None and self.job_table else None
        if self.max_receive_count is None:
            attrs = self.sqs.get_queue_attributes(
                QueueUrl=self.task_queue_url, AttributeNames=["RedrivePolicy", "VisibilityTimeout"]
            ).get("Attributes", {})
            self.max_receive_count = max_receive_count_of(attrs)
            if self.visibility_s is None:
                self.visibility_s = min(DEFAULT_LEASE_S, int(attrs.get("VisibilityTimeout", DEFAULT_LEASE_S)))

    def run(self, stop: threading.Event, *, max_tasks: int | None = None) -> int:
        """Poll until ``stop`` is set, ``max_tasks`` are done or a fatal error; returns tasks handled.

        An error that botocore's retries did not absorb is logged and backed off from; the slot
        goes on polling. A fatal one (``shardq.worker.aws.is_fatal``) is kept in ``self.fatal``
        and ends the loop. The worker's own ``stop_signal`` (a Spot notice) ends it too, without
        waiting for the supervisor to turn it into ``stop`` (``_stopping``).
        """
        while not self._stopping(stop) and (max_tasks is None or self.tasks_done < max_tasks):
            try:
                self.poll_once(stop)
            except Exception as exc:
                if is_fatal(exc):
                    self.fatal = exc
                    log.error(
                        "fatal AWS error, the worker stops: %s; fix the permissions, credentials or "
                        "resource, then restart it",
                        describe(exc),
                        extra={"worker_id": self.worker_id, "error": describe(exc)},
                    )
                    return self.tasks_done
                self.errors += 1
                self.activity.unsure()
                delay = self.backoff.next_delay()
                aws = isinstance(exc, BotoErrors)
                log.warning(
                    "poll failed %s (%s); backing off %.1f s, then polling again",
                    "after botocore's retries" if aws else "with an unexpected error",
                    describe(exc),
                    delay,
                    exc_info=not aws,
                    extra={"worker_id": self.worker_id, "error": describe(exc), "backoff_s": delay},
                )
                stop.wait(delay)
            else:
                self.backoff.reset()
        return self.tasks_done

    def poll_once(self, stop: threading.Event | None = None) -> bool:
        """One long poll; handles the task it gets. True when a task was handled.

        AWS errors propagate (``run`` decides what they mean); a task held when one is raised is
        left to its visibility timeout.
        """
        resp = self.sqs.receive_message(
            QueueUrl=self.task_queue_url,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=self.wait_s,
            # The first lease is the receive's: without it the queue's default (300 s) would hold a
            # task whose worker died in its first seconds for five minutes.
            **({"VisibilityTimeout": self.visibility_s} if self.visibility_s else {}),
            MessageSystemAttributeNames=RECEIVE_ATTRIBUTES,
        )
        for message in resp.get("Messages", []):
            if self._stopping(stop):
                # Shutting down: give it straight back rather than start it (a graceful release).
                self._hand_back(Lease.of(message))
                return False
            self.activity.task_started()
            try:
                self.handle(message)
            finally:
                self.activity.task_ended()
            self.tasks_done += 1
            return True
        self.activity.polled_empty()
        return False

    def _stopping(self, stop: threading.Event | None) -> bool:
        """True once this worker takes no new task: the supervisor's ``stop``, or the worker-wide
        ``stop_signal`` the moment it is set.

        The supervisor sets ``stop`` itself on SIGTERM, but learns of a Spot notice (which sets
        only ``stop_signal``, from the poller's thread) on its next tick. A slot that handed its
        stopped task back before that tick used to poll again, receive its own re-send and run it
        once more (an extra attempt, a checkpoint reloaded for nothing), as often as the tick was
        late: a loaded machine turned one release into several.
        """
        return (stop is not None and stop.is_set()) or self.stop_signal.is_set()

    def handle(self, message: dict[str, Any]) -> None:
        """Run one task message to its outcome."""
        lease = Lease.of(message)
        # Held from the moment it is received, so a shutdown during the checks releases it too.
        self.current = lease
        try:
            self._handle(message, lease)
        finally:
            lease.done.set()
            self.current = None

    def _handle(self, message: dict[str, Any], lease: Lease) -> None:
        try:
            task = ShardTask.from_json(message["Body"])
        except ValidationError:
            # Not runnable by anyone: leave it to the redrive policy (the DLQ, where alarms see it).
            log.exception("malformed task body; leaving it for the DLQ")
            return
        lease.releases = task.releases
        tlog = TaskLogAdapter(log, {"job_id": task.job_id, "round": task.round, "shard_id": task.shard_id})
        reason = drop_reason(self.store, task, tlog)
        if reason is not None:
            tlog.info("%s; dropping task %s unrun", reason, task.key)
            if reason == BUDGET_DROP:
                # Notice first, then delete (as a result): the job waits for every task it sent.
                notice = Dropped.of(task.job_id, task.round, task.shard_id, task.task_type)
                self.sqs.send_message(QueueUrl=self.results_queue_url, MessageBody=notice.body())
            self.sqs.delete_message(QueueUrl=self.task_queue_url, ReceiptHandle=lease.receipt)
            return
        # Hooks around the whole lease (run, post, delete): on ECS they hold the task's scale-in
        # protection (shardq.worker.protection), so a scale-in never stops a worker mid-shard.
        self._hook(self.on_task_start, "on_task_start")
        try:
            result = self._run_leased(task, lease, tlog)
            if result is None:
                return
            # The aggregator's own parser and verdict first (issue #22): a body it would reject
            # becomes this shard's failure naming why, a non-finite metric a diverged trial or a
            # failed shard, instead of a result thrown away while the job waits for it.
            result = verdicts.checked(result, task.kind)
            # Its receive → send, idle time left out: the aggregator sizes windows by it (core.depth).
            result = replace(result, busy_s=round(time.monotonic() - lease.received_at, 3))
            # Result first, then delete: a crash (or an AWS error) between the two duplicates a
            # result, which the aggregator drops, never loses one. An error in either leaves the
            # task to its visibility timeout.
            self.sqs.send_message(QueueUrl=self._results_url(task), MessageBody=result.to_json())
            self.sqs.delete_message(QueueUrl=self.task_queue_url, ReceiptHandle=lease.receipt)
            tlog.info(
                "task %s %s in %.2f s (attempt %d)",
                task.key,
                result.status,
                result.duration_s,
                lease.attempt,
                extra={"status": result.status, "duration_s": result.duration_s, "attempt": lease.attempt},
            )
        finally:
            self._hook(self.on_task_end, "on_task_end")

    def _run_leased(self, task: ShardTask, lease: Lease, tlog: logging.LoggerAdapter) -> ShardResult | None:
        """Run the task while the heartbeat holds it; the result to post, or None when given up."""
        if lease.abandoned.is_set():  # released by a shutdown before it started
            return None
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
        return None if result is None or lease.abandoned.is_set() else result

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
        entrypoint = self.entrypoint or task.entrypoint
        attempt = {
            "worker_id": self.worker_id,
            "attempt": lease.attempt,
            "price_per_hour": self.price_per_hour,
            # Only for code this worker may run: finding a module's file imports its parent packages,
            # and a refused module has no version worth recording.
            "code_version": None if self.trusted.refusal(entrypoint) else code_fingerprint(entrypoint),
        }
        try:
            with scratch.task_dir() as tmp:  # removed in the background (shardq.worker.scratch)
                outcome = self._run(task, tmp, tlog, lease.abandoned)
            attempt.update(self._resume_fields(lease))
            return ShardResult.for_task(
                task,
                "succeeded",
                metrics={k: float(v) for k, v in outcome.get("metrics", {}).items()},
                num_samples=int(outcome.get("num_samples", 0)),
                artifact_uri=outcome.get("artifact_uri"),
                model_uri=outcome.get("model_uri"),
                duration_s=round(time.monotonic() - started, 3),
                params=outcome.get("params"),
                **attempt,
            )
        except Stopped:
            # The function saved a checkpoint and returned on ctx.should_stop: hand the task back now
            # (unless the lease is lost: it is no longer ours), so the next worker resumes it at once,
            # by a re-send that costs no receive toward the DLQ (shardq.worker.release).
            tlog.info("task %s stopped (%s); released to the queue", task.key, self._stop_reason(lease))
            if not lease.lost.is_set():
                lease.abandoned.set()
                self._hand_back(lease)
            return None
        except FatalAwsError:
            # The worker's own bucket refused it: hand the task to a healthy worker and stop.
            lease.abandoned.set()
            self._release(lease.receipt)
            raise
        except Exception as exc:
            if lease.abandoned.is_set() or isinstance(exc, TaskAbandonedInChild):
                return None
            tlog.exception(
                "task %s failed on attempt %d (receive %d of %d)",
                task.key,
                lease.attempt,
                lease.receives,
                self.max_receive_count,
            )
            # A training function that cannot even be loaded, or a model the reduce cannot read,
            # fails every attempt the same way: report it now instead of cycling through receives.
            permanent = isinstance(exc, EntrypointError | ModelError | TaskTimeout) or (
                isinstance(exc, IsolatedTaskError | optuna_sampler.SamplerError) and exc.permanent
            )
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
                **self._resume_fields(lease),
            )

    @property
    def lease_s(self) -> int:
        """The task lease in force (``visibility_s``, set by ``__post_init__``)."""
        return int(self.visibility_s or DEFAULT_LEASE_S)

    def _heartbeat(self, lease: Lease, task: ShardTask, tlog: logging.LoggerAdapter) -> None:
        """Keep the lease (``shardq.worker.lease``); at the 12-hour ceiling, fail the task cleanly; a
        lost lease stops the task (``ctx.should_stop``) and keeps its outcome from being posted."""

        def extend(seconds: int) -> None:
            self.sqs.change_message_visibility(
                QueueUrl=self.task_queue_url, ReceiptHandle=lease.receipt, VisibilityTimeout=seconds
            )

        ended = keep_leased(
            extend,
            self.lease_s,
            received_at=lease.received_at,
            done=lease.done,
            abandoned=lease.abandoned,
            logger=tlog,
            ceiling_s=VISIBILITY_CEILING_S,
            margin_s=CEILING_MARGIN_S,
        )
        if ended == CEILING:
            lease.abandoned.set()
            self._ceiling_reached(lease, task, tlog, time.monotonic() - lease.received_at)
        elif ended == LOST:
            lease.lost.set()
            lease.abandoned.set()

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
            attempt=lease.attempt,
            duration_s=round(held, 3),
            error=error,
            price_per_hour=self.price_per_hour,
        )
        try:
            self.sqs.send_message(QueueUrl=self._results_url(task), MessageBody=result.to_json())
            self.sqs.delete_message(QueueUrl=self.task_queue_url, ReceiptHandle=lease.receipt)
        except Exception:
            tlog.warning("could not report the ceiling; SQS redelivers the task", exc_info=True)

    def _results_url(self, task: ShardTask) -> str:
        """The results queue this task's result takes (the fast one where it may move its round)."""
        return results_queue_for(task, self.results_queue_url, self.fast_results_queue_url)

    def _stop_reason(self, lease: Lease) -> str:
        if lease.lost.is_set():
            return "its lease was lost"
        return self.stop_signal.reason or "stop requested"

    def _run(
        self,
        task: ShardTask,
        tmp: Path,
        tlog: logging.LoggerAdapter,
        abandoned: threading.Event | None = None,
    ) -> dict[str, Any]:
        # A task too big for its message travels by claim check (shardq.core.enqueue): fetch the
        # body inside the attempt, so an S3 error counts as one failed attempt like any other.
        task = load_task(task, self.s3)
        task, asked = optuna_sampler.resolve_task(task)  # an Optuna trial: the sampler asks its params
        entrypoint = self.entrypoint or task.entrypoint
        # Before anything is downloaded: a task naming code this worker may not run fails at once,
        # and so does a module's own reduce on a job whose server strategy it would silently drop.
        fn = resolve(entrypoint, task.task_type, self.trusted)
        if task.task_type == "reduce" and fn is not None and needs_server_step(task.strategy):
            raise EntrypointError(custom_reduce_conflict(entrypoint, task.strategy))
        ctx = self._context(task, tmp, tlog)
        if task.task_type == "reduce":
            outcome = self._reduce(task, ctx, fn, tmp, abandoned)
        else:
            if fn is None:
                raise AttributeError(f"entrypoint {task.entrypoint!r} has no train function")
            outcome = self._call(entrypoint, fn, task, ctx, abandoned)
        published = self._publish(task, ctx, outcome, tlog)
        return published if asked is None else {**published, "params": asked}

    @property
    def trusted(self) -> AllowList:
        """The allow-list in force (set by ``__post_init__``)."""
        assert self.allow is not None
        return self.allow

    def _call(
        self,
        entrypoint: str,
        fn: Callable[..., Any],
        task: ShardTask,
        ctx: TaskContext,
        abandoned: threading.Event | None,
    ) -> dict[str, Any]:
        """The user's function: in this thread, or in a child process it can be stopped in when
        the task has a time limit (``shardq.worker.isolation``)."""
        if task.timeout_s:
            return run_isolated(entrypoint, task, ctx, task.timeout_s, abandoned, allow=self.trusted)
        return dict(fn(task, ctx) or {})
