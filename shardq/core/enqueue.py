"""Enqueue: put a (round, phase)'s tasks on the task queue, resumably, exactly once.

* The job record keeps a cursor per (round, phase); every message carries
  ``MessageDeduplicationId = job:round:shard:type`` (plus a retry generation), so a retried
  or continued fan-out sends nothing twice.
* Tasks go to ``max_parallel`` FIFO lanes (``MessageGroupId = job:lane``).
* A task body over ``INLINE_TASK_MAX_BYTES`` travels by claim check: the full body goes to the
  artifact bucket and the message carries an envelope (the task's identity and
  ``payload_uri``), so no request that validated can fail at the queue's size limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from shardq.core import planning, spend
from shardq.core.admission import Admission
from shardq.core.artifacts import read_bytes
from shardq.core.contracts import ShardTask
from shardq.core.fanout import FanOut, FanOutStats, Message
from shardq.core.jobstore import Cursor, JobRecord, JobStore

# Cursor checkpoint every this many tasks (50 SendMessageBatch calls).
CHUNK = 500
# Hand the rest of a fan-out to a fresh invocation when less than this is left
# (a 500-task chunk takes well under a second at the FIFO quota; throttling backoff adds seconds).
HANDOFF_MARGIN_S = 20.0
# SQS bills (and its batch limit counts) message bytes in 64 KiB chunks: a bigger task body
# goes to S3 once and the message carries its URI (claim check).
INLINE_TASK_MAX_BYTES = 64 * 1024

MetricSink = Callable[[str, float, str], None]


class EnqueueIncomplete(RuntimeError):
    """Time ran short mid fan-out; the cursor records where to continue."""

    def __init__(self, job_id: str, done: int, total: int) -> None:
        super().__init__(
            f"job {job_id}: enqueued {done}/{total} before the deadline; continue from the cursor"
        )
        self.job_id = job_id
        self.done = done
        self.total = total


def task_message(task: ShardTask, max_parallel: int, generation: int = 0) -> Message:
    """The queue message of a task: its lane's group and its deduplication id (one definition)."""
    return Message(
        body=task.to_json(),
        group_id=planning.group_id(task, max_parallel),
        dedup_id=planning.dedup_id(task, generation),
    )


def load_task(task: ShardTask, s3: Any) -> ShardTask:
    """The full task behind a claim-check envelope (the task itself when it travelled inline)."""
    if task.payload_uri is None:
        return task
    bucket, key = planning.split_s3(task.payload_uri)
    full = ShardTask.from_json(read_bytes(s3, bucket, key))
    if full.key != task.key:
        raise ValueError(f"claim check {task.payload_uri} holds task {full.key}, not {task.key}")
    return full


@dataclass
class Enqueuer:
    """Sends tasks for the engine: from the cursor on, checkpointing, claim-checking big bodies.

    Parameters
    ----------
    store, fanout, s3:
        The job store, the task queue's fan-out and an S3 client.
    bucket:
        The artifact bucket (task claim checks live under the job's prefix).
    metric, clock:
        Business-metric sink and wall clock (seconds since the epoch).
    admission:
        The gate of every send and each job's window (``shardq.core.admission``); None sends a
        round whole, as before windows.
    """

    store: JobStore
    fanout: FanOut
    s3: Any
    bucket: str
    metric: MetricSink
    clock: Callable[[], float]
    admission: Admission | None = None

    def message(self, task: ShardTask, max_parallel: int, generation: int = 0) -> Message:
        """``task_message``, with the body moved to S3 when it is too big to travel inline."""
        body = task.to_json()
        if len(body.encode()) <= INLINE_TASK_MAX_BYTES:
            return task_message(task, max_parallel, generation)
        layout = planning.Layout(self.bucket, task.job_id)
        key = layout.task_payload_key(task.round, task.task_type, task.shard_id, task.backup)
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body.encode(), ContentType="application/json")
        envelope = replace(
            task, data={}, hyperparameters={}, model={}, payload_uri=f"s3://{self.bucket}/{key}"
        )
        self.metric("TasksClaimChecked", 1, "Count")
        return task_message(envelope, max_parallel, generation)

    def plan(self, job: JobRecord, round_no: int, phase: str, shard: int, model_uri: str | None) -> ShardTask:
        """The task of ``shard`` in (round, phase), planned from the job's request.

        ``model_uri`` is the round's global model: where training starts, and where a server
        strategy's reduce steps from.
        """
        layout = planning.Layout(self.bucket, job.job_id)
        if phase == "train":
            return planning.train_task(job.request, job.job_id, layout, round_no, shard, model_uri)
        return planning.reduce_task(job.request, job.job_id, layout, round_no, model_uri)

    def refusal(self, job: JobRecord) -> str | None:
        """Why no new task of ``job`` may go on the queue now (None: it may): the one gate of
        every send, ``enqueue``'s and the drivers' that send their own tasks (asynchronous
        sweeps, FedBuff). ``Admission.may_send``; without admission (no windows) the spend guard
        still holds: a spent budget sends nothing."""
        return self.admission.may_send(job) if self.admission is not None else spend.admission_refusal(job)

    def enqueue(
        self,
        job: JobRecord,
        round_no: int,
        phase: str,
        model_uri: str | None,
        *,
        deadline: float | None = None,
        defer: list[Cursor] | None = None,
    ) -> FanOutStats:
        """Send the tasks of (round, phase) from the job's cursor on, checkpointing as it goes,
        as far as admission lets it (the job's window: ``Admission.limit``).

        With ``defer``, the last checkpoint is not written but appended there: the caller's move
        (``JobStore.start_reduce``/``start_round``) writes it, one call less on a round's path."""
        lanes = job.request.max_parallel
        stats = FanOutStats()
        total = job.fan_out(round_no, phase)
        stop = total
        held = self.refusal(job)
        if held is not None:
            self.metric("TasksHeld", 1, "Count")
            return stats
        window = None
        if self.admission is not None:
            stop = self.admission.limit(job, round_no, phase, total)
            window = self.admission.held_to(job, round_no, phase, stop, total)
        if job.enqueued(round_no, phase) >= stop:
            return stats
        # The cursor counts tasks sent, in the order of the round's planned tasks; a promoted
        # trial starts from its own model instead of the round's.
        planned = self.store.planned_tasks(job, round_no, phase)
        stop = min(stop, len(planned))
        for lo in range(job.enqueued(round_no, phase), stop, CHUNK):
            hi = min(stop, lo + CHUNK)
            messages = (
                self.message(self.plan(job, round_no, phase, shard, own or model_uri), lanes)
                for shard, own in planned[lo:hi]
            )
            self.fanout.send(messages, stats=stats, deadline=deadline)
            if defer is not None and hi == stop:
                defer.append(Cursor(hi, window))
            else:
                self.store.advance_cursor(job.job_id, round_no, phase, hi, window=window)
            self.metric("TasksEnqueued", hi - lo, "Count")
            if hi < stop and deadline is not None and deadline - self.clock() < HANDOFF_MARGIN_S:
                raise EnqueueIncomplete(job.job_id, hi, total)
        return stats

    def top_up(self, job: JobRecord, *, deadline: float | None = None) -> FanOutStats | None:
        """Refill the job's window from its cursor (the aggregator, as results are counted).

        Idempotent and safe to race: the cursor moves only forward and every message keeps its
        deduplication id. None when there is nothing to do (no windows, not training, round
        frozen, or every task sent).
        """
        if self.admission is None or not self.admission.windowed:
            return None
        if job.terminal or job.phase != "train" or job.closed_round == job.round:
            return None
        if job.enqueued(job.round, "train") >= job.fan_out(job.round, "train"):
            return None
        return self.enqueue(job, job.round, "train", job.model_uri, deadline=deadline)

    def resend(self, job: JobRecord, bodies: dict[int, str | None], generation: int) -> None:
        """Send tasks of the job's current (round, phase) again under a fresh ``generation``.

        A shard's kept task body (from its failed outcome) is sent as it was; the others are
        planned anew, each from the model it started from the first time: a promoted trial's own
        (the rung's stored plan), else the round's global model.
        """
        own: dict[int, str | None] = {}
        if any(body is None for body in bodies.values()):
            own = dict(self.store.planned_tasks(job, job.round, job.phase))
        tasks: Iterable[ShardTask] = (
            ShardTask.from_json(body)
            if body
            else self.plan(job, job.round, job.phase, shard, own.get(shard) or job.model_uri)
            for shard, body in sorted(bodies.items())
        )
        # The body carries its generation too: the worker keys the task's checkpoints by it, so a
        # retried shard starts fresh instead of resuming the attempt that failed.
        self.fanout.send(
            self.message(replace(t, generation=generation), job.request.max_parallel, generation)
            for t in tasks
        )
