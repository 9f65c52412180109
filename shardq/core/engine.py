"""The coordination engine: submit jobs, and the one place a job moves.

One ``Engine`` serves the splitter, the aggregator, the DLQ handler and the CLI; the Lambdas
are thin adapters around it. It composes the three steps of the data flow, one module each:

* ``shardq.core.enqueue``  — put a (round, phase)'s tasks on the queue, resumably;
* ``shardq.core.advance``  — record outcomes exactly once and advance rounds and phases;
* ``shardq.core.finalize`` — write the manifest, end the job once, publish the event once.

A job's status changes only here: ``advance`` moves it forward (and ends it through
``finalize``), ``finalize`` ends it (cancel), ``reopen`` brings a FAILED job back for a
retry. Each is a conditional write in ``JobStore``, so racing callers move a job once.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from shardq.core import async_sweep, pipeline
from shardq.core.admission import Admission
from shardq.core.advance import Advancer, CloseRangeIncomplete, RangeDispatch
from shardq.core.contracts import JobView, TrainingRequest, ValidationError
from shardq.core.enqueue import EnqueueIncomplete, Enqueuer
from shardq.core.fanout import FanOut, FanOutStats
from shardq.core.finalize import Finisher
from shardq.core.jobstore import JobNotFound, JobRecord, JobStore, Outcome, RecordOutcome
from shardq.core.rounds import Tick, Ticker
from shardq.core.settings import Settings
from shardq.core.tenancy import ENV as SCHEDULING_ENV
from shardq.core.tenancy import Scheduling

MetricSink = Callable[[str, float, str], None]


class JobConflict(ValueError):
    """The job id is taken by a different request."""


def request_hash(request: TrainingRequest) -> str:
    """Hash of the request without its job id: the same request resubmitted hashes the same."""
    data = request.to_dict()
    data.pop("job_id", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def new_job_id() -> str:
    """A sortable, unique job id."""
    return f"job-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"


def rejection(exc: Exception) -> dict[str, Any]:
    """The splitter's answer to a request it refuses (nothing was created)."""
    problems = exc.problems if isinstance(exc, ValidationError) else [str(exc)]
    return {"ok": False, "error": type(exc).__name__, "message": str(exc), "problems": problems}


@dataclass
class Engine:
    """The coordination logic over the job table, the task queue, the bucket and the event bus.

    Parameters
    ----------
    settings:
        Resource names and limits from the stack.
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
    # How a big map round's close ranges reach other invocations (None: run here, in turn).
    dispatch_ranges: RangeDispatch | None = None
    store: JobStore = field(init=False)
    fanout: FanOut = field(init=False)
    enqueuer: Enqueuer = field(init=False)
    finisher: Finisher = field(init=False)
    advancer: Advancer = field(init=False)
    ticker: Ticker = field(init=False)
    admission: Admission = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.store = JobStore(s.job_table, self.ddb, clock=self.clock)
        self.fanout = FanOut(
            self.sqs, s.task_queue_url, max_in_flight=self.max_in_flight or s.fanout_in_flight
        )
        self.admission = Admission(
            self.store,
            Scheduling.from_env({SCHEDULING_ENV: s.scheduling or ""}),
            self.clock,
            backlog=self._backlog,
            in_flight=self._in_flight,
        )
        self.enqueuer = Enqueuer(
            self.store, self.fanout, self.s3, s.artifact_bucket, self.metric, self.clock, self.admission
        )
        self.finisher = Finisher(
            self.store,
            self.s3,
            self.events,
            s.artifact_bucket,
            s.event_bus_name,
            s.job_ttl_days,
            self.metric,
            self.clock,
        )
        self.ticker = Ticker(self.sqs, s.results_queue_url, self.clock)
        self.advancer = Advancer(
            self.store,
            self.enqueuer,
            self.finisher,
            s.artifact_bucket,
            self.metric,
            self.ticker,
            self.clock,
            dispatch_ranges=self.dispatch_ranges,
        )

    # -- submit ------------------------------------------------------------------------------

    def submit(
        self, payload: dict[str, Any], *, deadline: float | None = None, invoked_as: str | None = None
    ) -> dict[str, Any]:
        """Validate a request, create its job (idempotent on job_id) and enqueue round 0.

        Raises ``ValidationError`` (nothing created), ``JobConflict`` (nothing changed) or
        ``EnqueueIncomplete`` (job created, cursor saved; call ``resume``). A fan-out that failed
        midway (``FanOutError``: the job exists, its status shows ``ENQUEUING n/N sent``) is
        finished by submitting the same request under the same job id again: it sends from the
        cursor, and deduplication ids drop what the failed call had sent past it.
        """
        request = TrainingRequest.from_dict(payload)
        self._check_buckets(request)
        request = self._admit(request, invoked_as)
        record = JobRecord.new(
            request, request.job_id or new_job_id(), request_hash(request), at=self.store.stamp()
        )
        if request.after is not None:  # a pipeline job: created WAITING (shardq.core.pipeline)
            record = pipeline.waiting_record(self, request, record)
        job, created = self.store.create_job(record)
        if not created and job.request_hash != record.request_hash:
            raise JobConflict(
                f"job_id '{job.job_id}' was already submitted with a different request; "
                "choose a new job_id (or omit it) to start another job"
            )
        if job.status == "RUNNING":
            # A resubmit of a job whose fan-out died midway finishes it from the cursor.
            self._enqueue_and_arm(job, deadline)
        status = job.status if created else self.store.get_job(job.job_id).status
        if status == "WAITING":
            # Linked to the job it follows; started (or ended) at once if that one already ended.
            status = pipeline.follow(self, job)
        return {
            "job_id": job.job_id,
            "status": status,
            "shards": request.task_count,
            "rounds": request.round_count,
            "created": created,
        }

    def answer(self, payload: dict[str, Any], *, deadline: float | None = None) -> dict[str, Any]:
        """``submit`` shaped as the splitter answers: ``{"ok": true, ...}`` or a ``rejection``.

        ``EnqueueIncomplete`` still propagates: only a Lambda can hand the fan-out on.
        """
        try:
            return {"ok": True, **self.submit(payload, deadline=deadline)}
        except (ValidationError, JobConflict) as exc:
            return rejection(exc)

    def _admit(self, request: TrainingRequest, invoked_as: str | None) -> TrainingRequest:
        """The request with its tenant settled (``invoked_as``: the caller's own tenant, on AWS
        the splitter alias it invoked); raises ``ValidationError`` for an unknown or foreign
        tenant and ``QuotaExceeded`` over a quota. A resubmit of an existing job is not counted
        against the quotas again; one submitted before tenants existed keeps its request as it was
        (the same request hashes the same)."""
        existing = None
        if request.job_id is not None:
            try:
                existing = self.store.get_job(request.job_id)
            except JobNotFound:
                existing = None
        tenant = self.admission.check_submit(request, invoked_as=invoked_as, quotas=existing is None)
        if existing is not None and existing.request.tenant is None and request.tenant is None:
            return request
        return request if request.tenant == tenant else replace(request, tenant=tenant)

    def _backlog(self) -> int:
        """Visible tasks on the task queue (admission's saturation signal)."""
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.settings.task_queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )
        return int(attrs.get("Attributes", {}).get("ApproximateNumberOfMessages", 0))

    def _in_flight(self) -> int:
        """Tasks workers hold now (admission sizes a saturated fleet's windows by it)."""
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.settings.task_queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
        )
        return int(attrs.get("Attributes", {}).get("ApproximateNumberOfMessagesNotVisible", 0))

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
        if job.status == "RUNNING":
            self._enqueue_and_arm(job, deadline)
            self.advance(job_id, deadline=deadline)
        return self.status(job_id).to_dict()

    def _enqueue_and_arm(self, job: JobRecord, deadline: float | None) -> None:
        """Enqueue the job's current (round, phase) from its cursor; the call that completes the
        fan-out arms the round's deadline (a fan-out cut short armed none)."""
        unsent = job.enqueued(job.round, job.phase) < job.fan_out(job.round, job.phase)
        self.enqueue_current(job, deadline=deadline)
        if unsent:
            self.ticker.arm_round(job)

    # -- the steps, composed ------------------------------------------------------------------

    def enqueue_current(self, job: JobRecord, *, deadline: float | None = None) -> FanOutStats:
        """Enqueue the tasks of the job's current (round, phase)."""
        if async_sweep.is_async(job.request):
            # An asynchronous sweep sends what its free slots take, decided exactly once.
            self.advancer.advance(job.job_id, deadline=deadline)
            return FanOutStats()
        return self.enqueuer.enqueue(job, job.round, job.phase, job.model_uri, deadline=deadline)

    def record(self, outcomes: list[Outcome], *, deadline: float | None = None) -> RecordOutcome:
        """Record outcomes exactly once; see ``JobStore.record``."""
        return self.advancer.record(outcomes, deadline=deadline)

    def advance(self, job_id: str, *, deadline: float | None = None) -> str:
        """Move a job as far as its recorded results allow; returns its status."""
        return self.advancer.advance(job_id, deadline=deadline)

    def close_range(self, job_id: str, round_no: int, index: int, *, deadline: float | None = None) -> str:
        """Run one range of a big round's close (``Advancer.close_range``), then advance the job:
        the invocation that stores the last range finishes it. Returns the job's status.

        Raises ``CloseRangeIncomplete`` when the range stopped near ``deadline``: hand it on."""
        self.advancer.close_range(job_id, round_no, index, deadline=deadline)
        return self.advancer.advance(job_id, deadline=deadline)

    def ingest(
        self,
        items: Sequence[Outcome | Tick],
        *,
        deadline: float | None = None,
        hand_on: Callable[[str], None] | None = None,
    ) -> list[tuple[Outcome | Tick, Exception]]:
        """Record outcomes (and round deadlines' ticks) and advance their jobs; see ``Advancer.ingest``."""
        return self.advancer.ingest(items, deadline=deadline, hand_on=hand_on)

    def finalize(self, job: JobRecord, status: str, error: str | None = None) -> str:
        """End a RUNNING job with ``status`` (once); see ``Finisher.finalize``."""
        return self.finisher.finalize(job, status, error)

    def manifest(self, job: JobRecord, status: str, error: str | None) -> dict[str, Any]:
        """The job's result manifest as of its recorded outcomes."""
        return self.finisher.manifest(job, status, error)

    def reopen(self, job_id: str) -> bool:
        """Bring a FAILED job back to RUNNING for a retry; False when it was not FAILED.

        A training round reopens with a fresh deadline (``JobStore.reopen``) and its tick armed."""
        job = self.store.get_job(job_id)
        if job.phase == "train" and job.closed_round == job.round:
            self.store.forget_close(job_id, job.round)  # before the round opens: no stale digest
        reopened = self.store.reopen(job)
        if reopened:
            self.metric("JobsReopened", 1, "Count")
            # The round's clock restarted: arm its new deadline (the old tick chain ended with the job).
            self.ticker.arm_round(self.store.get_job(job_id))
        return reopened

    def status(self, job_id: str) -> JobView:
        """The job's current view; raises JobNotFound."""
        return self.store.get_job(job_id).view()

    def upstream_finished(
        self,
        job_id: str,
        *,
        deadline: float | None = None,
        hand_on: Callable[[str], None] | None = None,
    ) -> dict[str, str]:
        """``job_id`` ended (its Job Finished event): start or end the jobs that follow it, once
        (``shardq.core.pipeline``); returns each follower's status. A follower's round 0 cut short
        by ``deadline`` goes to ``hand_on(follower)`` (``pipeline.release``)."""
        return pipeline.release_followers(self, job_id, deadline=deadline, hand_on=hand_on)


__all__ = [
    "CloseRangeIncomplete",
    "Engine",
    "EnqueueIncomplete",
    "JobConflict",
    "JobNotFound",
    "rejection",
    "request_hash",
]
