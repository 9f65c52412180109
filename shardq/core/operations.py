"""Operator actions on a job: progress, cancel, retry its failed shards.

These run from the CLI (or any script) against the same table and queues the Lambdas use,
with the same invariants as the engine: conditional transitions, outcome items and their
counters changed in one transaction, and every enqueue carrying a deduplication id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from shardq.core import planning
from shardq.core.contracts import ShardTask, TrainingRequest
from shardq.core.engine import Engine
from shardq.core.fanout import Message
from shardq.core.jobstore import counter, from_item, job_key, result_sk, to_item

# TransactWriteItems takes 100 actions: 99 outcome deletes + the job's counter update.
DELETES_PER_TRANSACTION = 99
# The job attribute (a number set) holding shards whose outcome was deleted for a retry but
# whose task may not be on the queue yet: a crash between the two is repaired by the next retry.
RETRY_PENDING = "retry_pending"


class OperationError(ValueError):
    """The job is not in a state that allows the operation; the message says why and what to do."""


@dataclass(frozen=True)
class PhaseProgress:
    """Counters of one (round, phase) as the job record holds them."""

    round: int
    phase: str
    total: int
    enqueued: int
    done: int
    failed: int

    @property
    def outstanding(self) -> int:
        """Tasks enqueued that have no recorded outcome yet (queued or running)."""
        return max(0, self.enqueued - self.done - self.failed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "round": self.round,
            "phase": self.phase,
            "total": self.total,
            "enqueued": self.enqueued,
            "done": self.done,
            "failed": self.failed,
        }


def progress(job: dict[str, Any]) -> list[PhaseProgress]:
    """Per (round, phase) counters from round 0 to the job's current phase, in order."""
    current, phase_now = int(job.get("round", 0)), job.get("phase", "train")
    kind = job.get("kind")
    rows = []
    for r in range(current + 1):
        phases = ["train"]
        if kind == "data_parallel" and (r < current or phase_now == "reduce"):
            phases.append("reduce")
        for phase in phases:
            rows.append(
                PhaseProgress(
                    round=r,
                    phase=phase,
                    total=int(job.get("task_count", 0)) if phase == "train" else 1,
                    enqueued=int(job.get(counter("enq", r, phase), 0)),
                    done=int(job.get(counter("ok", r, phase), 0)),
                    failed=int(job.get(counter("fail", r, phase), 0)),
                )
            )
    return rows


def failed_outcomes(
    engine: Engine, job_id: str, round_no: int | None = None, phase: str | None = None
) -> list[dict[str, Any]]:
    """Recorded failed outcomes of a job (optionally of one round and phase), in key order."""
    prefix = "RES#"
    if round_no is not None:
        prefix += f"r{round_no:04d}#"
        if phase is not None:
            prefix += f"{phase}#"
    kwargs: dict[str, Any] = {
        "TableName": engine.settings.job_table,
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :p)",
        "FilterExpression": "outcome = :failed",
        "ExpressionAttributeValues": {
            ":pk": {"S": f"JOB#{job_id}"},
            ":p": {"S": prefix},
            ":failed": {"S": "failed"},
        },
        "ConsistentRead": True,
    }
    rows: list[dict[str, Any]] = []
    while True:
        resp = engine.ddb.query(**kwargs)
        for item in resp.get("Items", []):
            row = from_item(item)
            row["result"] = json.loads(row["result"])
            rows.append(row)
        if "LastEvaluatedKey" not in resp:
            return rows
        kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


# -- cancel ---------------------------------------------------------------------------------


@dataclass
class CancelReport:
    """What ``cancel`` did and what is still in flight."""

    job_id: str
    status: str
    cancelled: bool
    round: int
    phase: str
    outstanding: int
    queue_in_flight: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return dict(self.__dict__)


def cancel(engine: Engine, job_id: str) -> CancelReport:
    """Move a RUNNING job to CANCELLED (conditionally), and say what is still in flight.

    The transition goes through ``Engine.finalize``: the manifest of what finished is written
    and the ``Job Finished`` event goes out once. Workers drop the job's queued tasks unrun;
    tasks a worker already holds run to the end and their results are recorded without moving
    the job. Raises ``JobNotFound``; a job that already finished is reported, not changed.
    """
    job = engine.store.get_job(job_id)
    cancelled = False
    if job["status"] == "RUNNING":
        status = engine.finalize(job, "CANCELLED", "cancelled by an operator (shardq cancel)")
        cancelled = status == "CANCELLED"
        job = engine.store.get_job(job_id)
    round_no, phase = int(job.get("round", 0)), str(job.get("phase", "train"))
    current = [p for p in progress(job) if p.round == round_no and p.phase == phase]
    outstanding = current[0].outstanding if current and cancelled else 0
    in_flight = None
    if cancelled and outstanding:
        attrs = engine.sqs.get_queue_attributes(
            QueueUrl=engine.settings.task_queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        # Queue-wide: other jobs' running tasks count too, so it is an upper bound for this job.
        in_flight = min(outstanding, int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)))
    return CancelReport(
        job_id=job_id,
        status=str(job["status"]),
        cancelled=cancelled,
        round=round_no,
        phase=phase,
        outstanding=outstanding,
        queue_in_flight=in_flight,
    )


# -- retry ----------------------------------------------------------------------------------


@dataclass
class RetryReport:
    """What ``retry_failed`` re-enqueued."""

    job_id: str
    round: int
    phase: str
    generation: int
    retried: list[int] = field(default_factory=list)
    status: str = "RUNNING"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return dict(self.__dict__)


def retry_failed(engine: Engine, job_id: str) -> RetryReport:
    """Re-enqueue the failed tasks of a job's current (round, phase); the job resumes.

    For a job that is FAILED because of failed shards (or a failed reduce), or RUNNING with
    failures. A FAILED job's tasks that never ran (dropped by workers once the job failed) are
    sent again too. In one transaction per chunk: the failed outcome items are deleted and their
    ``fail`` counters and ``failed_total`` decremented, conditional on the job still being
    where it was; the last chunk also sets a FAILED job back to RUNNING (clearing what
    ``finalize`` set). Then the tasks go back on the queue with a fresh deduplication id
    (generation ``retry_generation``), built from the task body kept on the outcome item when
    there is one, else re-planned; then the job is advanced.

    Order matters: outcomes are deleted *before* the tasks are sent, so a fast worker's new
    result is never taken for a duplicate of the old failure; the shard ids wait in
    ``retry_pending`` in between, so a crash there is repaired by running the retry again.

    Failures of rounds that already finished stay counted (their rounds moved on); when they
    alone exceed ``max_failed_shards`` the retry is refused, since the job would fail again.

    Raises ``JobNotFound`` or ``OperationError``.
    """
    store = engine.store
    job = store.get_job(job_id)
    status = str(job["status"])
    round_no, phase = int(job.get("round", 0)), str(job.get("phase", "train"))
    if status not in ("RUNNING", "FAILED"):
        raise OperationError(
            f"job {job_id} is {status}: only a FAILED job or a RUNNING job with failed shards can be "
            "retried; submit the request again under a new job_id instead"
        )
    rows = failed_outcomes(engine, job_id, round_no, phase)
    pending = sorted(int(s) for s in job.get(RETRY_PENDING) or [])
    if not rows and not pending and not (status == "FAILED" and _unrun(engine, job, round_no, phase)):
        reason = f" ({job['error']})" if job.get("error") else ""
        raise OperationError(
            f"job {job_id} has no failed tasks in round {round_no} ({phase}) to retry{reason}; "
            "see `shardq status` and the result manifest"
        )
    if phase == "train":
        earlier = int(job.get("failed_total", 0)) - len(rows)
        budget = int(job.get("max_failed_shards", 0))
        if earlier > budget:
            raise OperationError(
                f"job {job_id}: {earlier} failed shards of finished rounds exceed max_failed_shards={budget} "
                "on their own, so a retry would fail the job again; submit the request again instead"
            )
    # A fresh generation per retry: the new tasks' deduplication ids differ from every earlier send.
    generation = int(
        engine.ddb.update_item(
            TableName=store.table,
            Key=job_key(job_id),
            UpdateExpression="ADD retry_generation :one",
            ConditionExpression="attribute_exists(pk) AND #s = :s",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=to_item({":one": 1, ":s": status}),
            ReturnValues="UPDATED_NEW",
        )["Attributes"]["retry_generation"]["N"]
    )
    bodies: dict[int, str | None] = {int(r["result"]["shard_id"]): r.get("task") for r in rows}
    for shard in pending:
        bodies.setdefault(shard, None)
    if status == "FAILED":
        # A job that failed mid-phase had its other queued tasks dropped unrun by the workers
        # (they skip finished jobs' tasks): send those again too, or the phase never completes.
        # One still on the queue would run twice; its second result is a duplicate and dropped.
        for shard in _unrun(engine, job, round_no, phase):
            bodies.setdefault(shard, None)
    chunks = [rows[i : i + DELETES_PER_TRANSACTION] for i in range(0, len(rows), DELETES_PER_TRANSACTION)]
    for i, chunk in enumerate(chunks):
        _forget_failures(engine, job, chunk, reopen=(i == len(chunks) - 1 and status == "FAILED"))
    if not chunks and status == "FAILED":
        _forget_failures(engine, job, [], reopen=True)

    request = TrainingRequest.from_json(job["request"])
    layout = planning.Layout(engine.settings.artifact_bucket, job_id)
    messages = []
    for shard, body in sorted(bodies.items()):
        if body:
            task = ShardTask.from_json(body)
        elif phase == "train":
            task = planning.train_task(request, job_id, layout, round_no, shard, job.get("model_uri"))
        else:
            task = planning.reduce_task(request, job_id, layout, round_no)
        messages.append(
            Message(
                body=task.to_json(),
                group_id=planning.group_id(job_id, planning.lane(shard, request.max_parallel)),
                dedup_id=planning.dedup_id(task, generation),
            )
        )
    engine.fanout.send(messages)
    engine.ddb.update_item(
        TableName=store.table,
        Key=job_key(job_id),
        UpdateExpression=f"DELETE {RETRY_PENDING} :shards",
        ExpressionAttributeValues={":shards": {"NS": [str(s) for s in bodies]}},
    )
    final = engine.advance(job_id)
    return RetryReport(
        job_id=job_id,
        round=round_no,
        phase=phase,
        generation=generation,
        retried=sorted(bodies),
        status=final,
    )


def _unrun(engine: Engine, job: dict[str, Any], round_no: int, phase: str) -> list[int]:
    """Tasks of (round, phase) with no recorded outcome at all."""
    planned = range(int(job.get("task_count", 0))) if phase == "train" else range(1)
    recorded = {int(r["result"]["shard_id"]) for r in engine.store.results(job["job_id"], round_no, phase)}
    return [shard for shard in planned if shard not in recorded]


def _forget_failures(
    engine: Engine, job: dict[str, Any], rows: list[dict[str, Any]], *, reopen: bool
) -> None:
    """Delete failed outcome items and un-count them in one transaction; optionally reopen the job."""
    job_id = job["job_id"]
    round_no, phase = int(job["round"]), str(job["phase"])
    names = {"#s": "status", "#r": "round", "#p": "phase"}
    values: dict[str, Any] = {":s": job["status"], ":r": round_no, ":p": phase}
    adds, sets, removes = [], [], []
    if rows:
        names["#f"] = counter("fail", round_no, phase)
        values[":minus"] = -len(rows)
        adds.append("#f :minus")
        if phase == "train":
            adds.append("failed_total :minus")
        names["#pending"] = RETRY_PENDING
        values[":shards"] = {int(r["result"]["shard_id"]) for r in rows}
        adds.append("#pending :shards")
    if reopen:
        values[":running"] = "RUNNING"
        sets.append("#s = :running")
        for i, name in enumerate(
            ("finished_at", "result_uri", "error", "event_pending", "event_claim", "expires_at")
        ):
            names[f"#x{i}"] = name
            removes.append(f"#x{i}")
    expr = ""
    if sets:
        expr += "SET " + ", ".join(sets) + " "
    if adds:
        expr += "ADD " + ", ".join(adds) + " "
    if removes:
        expr += "REMOVE " + ", ".join(removes)
    update = {
        "Update": {
            "TableName": engine.settings.job_table,
            "Key": job_key(job_id),
            "UpdateExpression": expr.strip(),
            "ConditionExpression": "attribute_exists(pk) AND #s = :s AND #r = :r AND #p = :p",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": to_item(values),
        }
    }
    deletes = [
        {
            "Delete": {
                "TableName": engine.settings.job_table,
                "Key": {
                    "pk": {"S": f"JOB#{job_id}"},
                    "sk": {"S": result_sk(round_no, phase, int(r["result"]["shard_id"]))},
                },
                "ConditionExpression": "outcome = :failed",
                "ExpressionAttributeValues": {":failed": {"S": "failed"}},
            }
        }
        for r in rows
    ]
    try:
        engine.ddb.transact_write_items(TransactItems=[*deletes, update])
    except engine.ddb.exceptions.TransactionCanceledException as exc:
        raise OperationError(
            f"job {job_id} changed while retrying (status, round or an outcome moved on); "
            "run `shardq status` and retry again"
        ) from exc


__all__ = [
    "CancelReport",
    "OperationError",
    "PhaseProgress",
    "RetryReport",
    "cancel",
    "failed_outcomes",
    "progress",
    "retry_failed",
]
