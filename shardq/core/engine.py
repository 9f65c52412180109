"""The coordination engine: submit jobs, enqueue rounds, record results, advance and finish jobs.

One ``Engine`` serves the splitter, the aggregator and the DLQ handler; the
Lambdas are thin adapters around it. Its invariants:

* Every enqueue is resumable: the job record keeps a cursor per (round, phase)
  and every message carries ``MessageDeduplicationId = job:round:shard:type``,
  so a retried or continued fan-out sends nothing twice.
* Every outcome is counted once: result item and counter increment share one
  DynamoDB transaction (``JobStore.record``).
* Actions happen *before* the transition that records them (enqueue the next
  round, then move the job to it), so a crash in between is repaired by the
  redelivered result that triggers ``advance`` again; transitions are
  conditional, so two racing aggregators move a job once.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shardq.core import planning
from shardq.core.contracts import TERMINAL_STATUSES, JobView, ShardResult, TrainingRequest, ValidationError
from shardq.core.fanout import FanOut, FanOutStats, Message
from shardq.core.jobstore import JobNotFound, JobStore, Outcome, RecordOutcome, counter, job_key, now_iso
from shardq.core.metrics import leaderboard, reduce_inputs, summarize_round, weighted_metrics
from shardq.core.settings import Settings

# Cursor checkpoint every this many tasks (50 SendMessageBatch calls).
CHUNK = 500
# Hand the rest of a fan-out to a fresh invocation when less than this is left
# (a 500-task chunk takes well under a second at the FIFO quota; throttling backoff adds seconds).
HANDOFF_MARGIN_S = 20.0
# Jobs whose shape (task count, rounds, kind) an engine remembers before starting over.
SHAPE_CACHE_SIZE = 1024
# A crashed event publisher's claim is taken over after this long.
EVENT_CLAIM_LEASE_S = 60.0

MetricSink = Callable[[str, float, str], None]


class JobConflict(ValueError):
    """The job id is taken by a different request."""


class EnqueueIncomplete(RuntimeError):
    """Time ran short mid fan-out; the cursor records where to continue."""

    def __init__(self, job_id: str, done: int, total: int) -> None:
        super().__init__(
            f"job {job_id}: enqueued {done}/{total} before the deadline; continue from the cursor"
        )
        self.job_id = job_id
        self.done = done
        self.total = total


def request_hash(request: TrainingRequest) -> str:
    """Hash of the request without its job id: the same request resubmitted hashes the same."""
    data = request.to_dict()
    data.pop("job_id", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def new_job_id() -> str:
    """A sortable, unique job id."""
    return f"job-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"


def job_view(job: dict[str, Any]) -> JobView:
    """The people-facing view of a job record."""
    r, phase = int(job.get("round", 0)), job.get("phase", "train")
    return JobView(
        job_id=job["job_id"],
        status=job["status"],
        kind=job["kind"],
        round=r,
        rounds=int(job.get("rounds", 1)),
        phase=phase,
        shard_count=int(job.get("task_count", 0)),
        done=int(job.get(counter("ok", r, "train"), 0)),
        failed=int(job.get("failed_total", 0)),
        created_at=job.get("created_at", ""),
        finished_at=job.get("finished_at"),
        result_uri=job.get("result_uri"),
        error=job.get("error"),
    )


@dataclass
class Engine:
    """The coordination logic over the job table, the task queue, the bucket and the event bus.

    Parameters
    ----------
    settings:
        Resource names from the stack.
    ddb, sqs, s3, events:
        boto3 clients.
    metric:
        Optional sink ``(name, value, unit)`` for business metrics (Powertools Metrics in Lambda).
    max_in_flight:
        SendMessageBatch calls in flight; default ``settings.fanout_in_flight``.
    clock:
        Seconds since the epoch; injectable for tests.
    """

    settings: Settings
    ddb: Any
    sqs: Any
    s3: Any
    events: Any
    metric: MetricSink = field(default=lambda name, value, unit: None)
    max_in_flight: int | None = None
    clock: Callable[[], float] = time.time
    store: JobStore = field(init=False)
    fanout: FanOut = field(init=False)
    # A job's task count, rounds and kind never change: read once per warm container, not per batch.
    _shapes: dict[str, tuple[int, int, str]] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.store = JobStore(self.settings.job_table, self.ddb)
        in_flight = self.max_in_flight or self.settings.fanout_in_flight
        self.fanout = FanOut(self.sqs, self.settings.task_queue_url, max_in_flight=in_flight)

    # -- submit ------------------------------------------------------------------------------

    def submit(self, payload: dict[str, Any], *, deadline: float | None = None) -> dict[str, Any]:
        """Validate a request, create its job (idempotent on job_id) and enqueue round 0.

        Raises ``ValidationError`` (nothing created), ``JobConflict`` (nothing changed) or
        ``EnqueueIncomplete`` (job created, cursor saved; call ``resume``).
        """
        request = TrainingRequest.from_dict(payload)
        self._check_buckets(request)
        job_id = request.job_id or new_job_id()
        record = {
            "job_id": job_id,
            "kind": request.kind,
            "status": "RUNNING",
            "created_at": now_iso(),
            "request": request.to_json(),
            "request_hash": request_hash(request),
            "rounds": request.rounds,
            "task_count": request.task_count,
            "max_failed_shards": request.max_failed_shards,
            "round": 0,
            "phase": "train",
            "round_started_at": now_iso(),
            "failed_total": 0,
            "model_uri": request.model.get("init_uri"),
        }
        job, created = self.store.create_job(record)
        if not created and job.get("request_hash") != record["request_hash"]:
            raise JobConflict(
                f"job_id '{job_id}' was already submitted with a different request; "
                "choose a new job_id (or omit it) to start another job"
            )
        if job["status"] == "RUNNING":
            self.enqueue_current(job, deadline=deadline)
        view = job_view(self.store.get_job(job_id)) if not created else job_view(job)
        return {
            "job_id": job_id,
            "status": view.status,
            "shards": request.task_count,
            "rounds": request.rounds,
            "created": created,
        }

    def _check_buckets(self, request: TrainingRequest) -> None:
        """Refuse s3:// URIs outside the buckets the workers may read (when the stack says which)."""
        allowed = self.settings.data_buckets
        if allowed is None:
            return
        uris = [("dataset.uri", request.dataset.uri), ("model.init_uri", request.model.get("init_uri"))]
        uris += [(f"dataset.files[{i}]", f) for i, f in enumerate(request.dataset.files or ())]
        problems = []
        for name, uri in uris:
            if isinstance(uri, str) and uri.startswith("s3://"):
                bucket = uri.removeprefix("s3://").split("/", 1)[0]
                if bucket not in allowed:
                    problems.append(
                        f"{name} {uri!r} is in bucket '{bucket}', which the workers cannot read "
                        f"(readable: {', '.join(allowed)}); copy the data there, or add the bucket's ARN "
                        "to dataset_bucket_arns in cdk.json and redeploy"
                    )
        if problems:
            raise ValidationError("TrainingRequest", problems)

    def resume(self, job_id: str, *, deadline: float | None = None) -> dict[str, Any]:
        """Continue a job whose fan-out was cut short: enqueue from the cursor, then advance.

        Both steps are idempotent, so the continuation serves a round-0 enqueue the splitter
        handed on and a next-round enqueue the aggregator handed on alike.
        """
        job = self.store.get_job(job_id)
        if job["status"] == "RUNNING":
            self.enqueue_current(job, deadline=deadline)
            self.advance(job_id, deadline=deadline)
        return job_view(self.store.get_job(job_id)).to_dict()

    # -- enqueue -----------------------------------------------------------------------------

    def enqueue_current(self, job: dict[str, Any], *, deadline: float | None = None) -> FanOutStats:
        """Enqueue the tasks of the job's current (round, phase)."""
        return self.enqueue(job, int(job["round"]), job["phase"], job.get("model_uri"), deadline=deadline)

    def enqueue(
        self,
        job: dict[str, Any],
        round_no: int,
        phase: str,
        init_model_uri: str | None,
        *,
        deadline: float | None = None,
    ) -> FanOutStats:
        """Send the tasks of (round, phase) from the job's cursor on, checkpointing as it goes."""
        request = TrainingRequest.from_json(job["request"])
        job_id = job["job_id"]
        layout = planning.Layout(self.settings.artifact_bucket, job_id)
        cursor_name = counter("enq", round_no, phase)
        total = request.task_count if phase == "train" else 1
        start = int(job.get(cursor_name, 0))
        stats = FanOutStats()

        def message(index: int) -> Message:
            if phase == "train":
                task = planning.train_task(request, job_id, layout, round_no, index, init_model_uri)
            else:
                task = planning.reduce_task(request, job_id, layout, round_no)
            return Message(
                body=task.to_json(),
                group_id=planning.group_id(job_id, planning.lane(index, request.max_parallel)),
                dedup_id=planning.dedup_id(task),
            )

        for lo in range(start, total, CHUNK):
            hi = min(total, lo + CHUNK)
            self.fanout.send((message(i) for i in range(lo, hi)), stats=stats)
            self.store.advance_cursor(job_id, cursor_name, hi)
            self.metric("TasksEnqueued", hi - lo, "Count")
            if hi < total and deadline is not None and deadline - self.clock() < HANDOFF_MARGIN_S:
                raise EnqueueIncomplete(job_id, hi, total)
        return stats

    # -- record and advance ------------------------------------------------------------------

    def record(self, outcomes: list[Outcome]) -> RecordOutcome:
        """Record outcomes exactly once; see ``JobStore.record``."""
        result = self.store.record(outcomes)
        self.metric("ResultsRecorded", len(result.recorded), "Count")
        if result.duplicates:
            self.metric("DuplicateResults", len(result.duplicates), "Count")
        return result

    def advance(self, job_id: str, *, deadline: float | None = None) -> str:
        """Move a job as far as its recorded results allow; returns its status.

        Safe to call any number of times from any number of invocations.
        """
        while True:
            job = self.store.get_job(job_id)
            status = job["status"]
            if status in TERMINAL_STATUSES:
                if job.get("event_pending"):
                    self._publish_finished(job)
                return str(status)
            round_no, phase = int(job["round"]), job["phase"]
            if int(job.get("failed_total", 0)) > int(job.get("max_failed_shards", 0)):
                return self.finalize(
                    job,
                    "FAILED",
                    f"{job['failed_total']} shards failed, over max_failed_shards={job['max_failed_shards']}",
                )
            expected = int(job["task_count"]) if phase == "train" else 1
            done = int(job.get(counter("ok", round_no, phase), 0)) + int(
                job.get(counter("fail", round_no, phase), 0)
            )
            if done < expected:
                return str(status)
            if not self._complete_phase(job, round_no, phase, deadline):
                return str(self.store.get_job(job_id)["status"])

    def _complete_phase(self, job: dict[str, Any], round_no: int, phase: str, deadline: float | None) -> bool:
        """Act on a completed (round, phase); False when the job finished."""
        job_id = job["job_id"]
        request = TrainingRequest.from_json(job["request"])
        expect = {"status": "RUNNING", "round": round_no, "phase": phase}
        if phase == "train":
            results = [ShardResult.from_json(r["result"]) for r in self.store.results(job_id, round_no)]
            summary = summarize_round(round_no, results, job.get("round_started_at"))
            self.store.put_round_summary(job_id, round_no, summary)
            if request.kind != "data_parallel":
                self.finalize(job, "SUCCEEDED")
                return False
            inputs = reduce_inputs(results)
            if not inputs["models"]:
                self.finalize(job, "FAILED", f"round {round_no} produced no shard model to reduce")
                return False
            layout = planning.Layout(self.settings.artifact_bucket, job_id)
            self._put_json(layout.reduce_inputs_key(round_no), inputs)
            self.enqueue(job, round_no, "reduce", None, deadline=deadline)
            self.store.update_job(job_id, set_values={"phase": "reduce"}, expect=expect)
            return True
        reduced = [ShardResult.from_json(r["result"]) for r in self.store.results(job_id, round_no, "reduce")]
        if not reduced or reduced[0].status != "succeeded":
            error = reduced[0].error if reduced else "no reduce result"
            self.finalize(job, "FAILED", f"reduce of round {round_no} failed: {error}")
            return False
        model_uri = reduced[0].artifact_uri
        self._round_finished(job, round_no)
        if round_no + 1 >= request.rounds:
            self.store.update_job(job_id, set_values={"model_uri": model_uri}, expect=expect)
            self.finalize({**job, "model_uri": model_uri}, "SUCCEEDED")
            return False
        self.enqueue(job, round_no + 1, "train", model_uri, deadline=deadline)
        self.store.update_job(
            job_id,
            set_values={
                "round": round_no + 1,
                "phase": "train",
                "model_uri": model_uri,
                "round_started_at": now_iso(),
            },
            expect=expect,
        )
        return True

    def _round_finished(self, job: dict[str, Any], round_no: int) -> None:
        started = job.get("round_started_at")
        if started:
            begun = datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp()
            self.metric("RoundDuration", max(0.0, self.clock() - begun), "Seconds")

    # -- finish ------------------------------------------------------------------------------

    def finalize(self, job: dict[str, Any], status: str, error: str | None = None) -> str:
        """Write the result manifest, move the job to ``status`` once, publish the event once."""
        job_id = job["job_id"]
        layout = planning.Layout(self.settings.artifact_bucket, job_id)
        manifest = self.manifest(job, status, error)
        self._put_json(layout.manifest_key(), manifest)
        result_uri = f"s3://{layout.bucket}/{layout.manifest_key()}"
        expires = datetime.now(UTC) + timedelta(days=self.settings.job_ttl_days)
        won = self.store.update_job(
            job_id,
            set_values={
                "status": status,
                "finished_at": manifest["finished_at"],
                "result_uri": result_uri,
                "error": error,
                "event_pending": True,
                "expires_at": int(expires.timestamp()),
            },
            expect={"status": "RUNNING"},
        )
        if won:
            self.metric("JobsFinished", 1, "Count")
            self._round_finished(job, int(job.get("round", 0)))
        # Winner or not, make sure the event went out (the winner may have crashed before it).
        current = self.store.get_job(job_id)
        if not won and current["status"] != status:
            # Lost to another ending (a cancel racing the last result): our manifest may have
            # overwritten the winner's, so put back the one that matches the job's status.
            self._put_json(
                layout.manifest_key(), self.manifest(current, current["status"], current.get("error"))
            )
        if current.get("event_pending"):
            self._publish_finished(current)
        return str(current["status"])

    def manifest(self, job: dict[str, Any], status: str, error: str | None) -> dict[str, Any]:
        """The result manifest: deterministic for a given set of recorded outcomes."""
        job_id = job["job_id"]
        request = TrainingRequest.from_json(job["request"])
        rows = self.store.all_results(job_id)
        results = [ShardResult.from_json(r["result"]) for r in rows]
        train = [r for r in results if r.task_type == "train"]
        failed = [
            {
                "round": r.round,
                "shard_id": r.shard_id,
                "task_type": r.task_type,
                "error": r.error,
                "source": row.get("source"),
                "receive_count": row.get("receive_count"),
            }
            for r, row in zip(results, rows, strict=True)
            if r.status == "failed"
        ]
        manifest: dict[str, Any] = {
            "schema_version": 1,
            "job_id": job_id,
            "kind": request.kind,
            "status": status,
            "error": error,
            "created_at": job.get("created_at"),
            # Latest recording time, not "now": two racing finalizers write the same manifest.
            "finished_at": max((row["recorded_at"] for row in rows), default=job.get("created_at")),
            "rounds": self.store.round_summaries(job_id),
            "failed": failed,
            "request": request.to_dict(),
        }
        if request.kind == "data_parallel":
            manifest["final_model_uri"] = job.get("model_uri") if status == "SUCCEEDED" else None
        elif request.kind == "sweep":
            assert request.objective is not None and request.search_space is not None
            trials = [planning.trial(request.search_space, i) for i in range(request.task_count)]
            board = leaderboard(train, request.objective, trials)
            manifest["objective"] = {
                "metric": request.objective.metric,
                "direction": request.objective.direction,
            }
            manifest["leaderboard"] = board
            manifest["best"] = board[0] if board else None
        else:
            manifest["outputs"] = [
                {
                    "shard_id": r.shard_id,
                    "artifact_uri": r.artifact_uri,
                    "num_samples": r.num_samples,
                    "metrics": r.metrics,
                }
                for r in sorted(train, key=lambda r: r.shard_id)
                if r.status == "succeeded"
            ]
            manifest["metrics"] = weighted_metrics(train)
        return manifest

    def _publish_finished(self, job: dict[str, Any]) -> None:
        """Publish ``Job Finished`` once: claim it, send it, then clear the pending flag.

        The claim is a lease: if its holder dies before clearing the flag, a later
        ``advance`` (driven by the redelivered batch) takes the claim over and sends it.
        """
        job_id = job["job_id"]
        now = self.clock()
        try:
            self.ddb.update_item(
                TableName=self.settings.job_table,
                Key=job_key(job_id),
                UpdateExpression="SET event_claim = :now",
                ConditionExpression=(
                    "attribute_exists(event_pending) AND "
                    "(attribute_not_exists(event_claim) OR event_claim < :stale)"
                ),
                ExpressionAttributeValues={
                    ":now": {"N": repr(now)},
                    ":stale": {"N": repr(now - EVENT_CLAIM_LEASE_S)},
                },
            )
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return  # someone else holds (or already sent) it
        detail = {
            "job_id": job_id,
            "kind": job["kind"],
            "status": job["status"],
            "result_uri": job.get("result_uri"),
            "error": job.get("error"),
        }
        try:
            resp = self.events.put_events(
                Entries=[
                    {
                        "Source": "shardq",
                        "DetailType": "Job Finished",
                        "Detail": json.dumps(detail),
                        "EventBusName": self.settings.event_bus_name,
                    }
                ]
            )
            if resp.get("FailedEntryCount"):
                raise RuntimeError(f"EventBridge refused the Job Finished event: {resp.get('Entries')}")
        except Exception:
            # Give the claim back so the retry that follows can send it at once.
            self.store.update_job(job_id, remove=["event_claim"])
            raise
        self.store.update_job(job_id, remove=["event_pending", "event_claim"])

    def _put_json(self, key: str, data: dict[str, Any]) -> None:
        self.s3.put_object(
            Bucket=self.settings.artifact_bucket,
            Key=key,
            Body=json.dumps(data, indent=2, sort_keys=True, default=str).encode(),
            ContentType="application/json",
        )

    # -- ingest (aggregator, DLQ handler) ---------------------------------------------------

    def ingest(
        self,
        outcomes: list[Outcome],
        *,
        deadline: float | None = None,
        hand_on: Callable[[str], None] | None = None,
    ) -> list[tuple[Outcome, Exception]]:
        """Record outcomes and advance their jobs, job by job; returns the outcomes that failed.

        One job's trouble (unknown job, throttling) fails only that job's outcomes: the event
        source redelivers them, and the redelivery drives ``advance`` again. A next-round
        fan-out cut short by the deadline is handed on through ``hand_on(job_id)`` (an async
        splitter continuation) rather than failed, so big rounds neither wait out visibility
        timeouts nor burn the results' receive count.
        """
        by_job: dict[str, list[Outcome]] = {}
        for o in outcomes:
            by_job.setdefault(o.result.job_id, []).append(o)
        failed: list[tuple[Outcome, Exception]] = []
        for job_id, group in by_job.items():
            foreign: list[tuple[Outcome, Exception]] = []
            try:
                planned, foreign = self._planned(job_id, group)
                self.record(planned)
                try:
                    self.advance(job_id, deadline=deadline)
                except EnqueueIncomplete:
                    if hand_on is None:
                        raise
                    hand_on(job_id)
            except Exception as exc:
                rejected = {id(o) for o, _ in foreign}
                failed.extend((o, exc) for o in group if id(o) not in rejected)
            failed.extend(foreign)
        return failed

    def _planned(
        self, job_id: str, outcomes: list[Outcome]
    ) -> tuple[list[Outcome], list[tuple[Outcome, Exception]]]:
        """Split outcomes into those of tasks the job planned and those it never did.

        A result for a shard, round or task type the job does not have (a foreign or forged
        message) must never be counted: it would complete a round whose real shards are still
        running. It is rejected with the reason and goes the way of malformed records.
        """
        if job_id not in self._shapes:
            if len(self._shapes) >= SHAPE_CACHE_SIZE:
                self._shapes.clear()
            job = self.store.get_job(job_id)
            self._shapes[job_id] = (int(job["task_count"]), int(job.get("rounds", 1)), str(job["kind"]))
        shards, rounds, kind = self._shapes[job_id]
        reduces = kind == "data_parallel"
        keep: list[Outcome] = []
        foreign: list[tuple[Outcome, Exception]] = []
        for o in outcomes:
            r = o.result
            problem = None
            if r.round >= rounds:
                problem = f"round {r.round} does not exist: job {job_id} has {rounds} round(s)"
            elif r.task_type == "train" and r.shard_id >= shards:
                problem = f"shard_id {r.shard_id} does not exist: job {job_id} has {shards} tasks per round"
            elif r.task_type == "reduce" and (not reduces or r.shard_id != 0):
                problem = f"job {job_id} ({kind}) has no reduce task {r.shard_id} in round {r.round}"
            if problem is None:
                keep.append(o)
            else:
                foreign.append((o, ValidationError("ShardResult", [problem])))
        return keep, foreign

    # -- reads -------------------------------------------------------------------------------

    def status(self, job_id: str) -> JobView:
        """The job's current view; raises JobNotFound."""
        return job_view(self.store.get_job(job_id))


__all__ = ["Engine", "EnqueueIncomplete", "JobConflict", "JobNotFound", "job_view", "request_hash"]
