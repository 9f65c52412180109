"""Operator actions on a job: progress, cancel, retry its failed shards.

These run from the CLI (or any script) against the same table and queues the Lambdas use,
with the same invariants as the engine: conditional transitions, outcome items and their
counters changed in one transaction, and every enqueue carrying a deduplication id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shardq.core import fedbuff_retry, fedbuff_view, pipeline, spend
from shardq.core.advance import close_ranges
from shardq.core.async_sweep import AsyncSweepError, rung_bounds
from shardq.core.engine import Engine
from shardq.core.jobstore import MAX_RETRY_CHUNK, JobChanged, JobRecord, ResultRecord

# Failed outcomes forgotten per transaction (TransactWriteItems: 99 deletes + the job's update).
RETRY_CHUNK = MAX_RETRY_CHUNK


class OperationError(ValueError):
    """The job is not in a state that allows the operation; the message says why and what to do."""


@dataclass(frozen=True)
class PhaseProgress:
    """Counters of one (round, phase) as the job record holds them.

    ``done`` counts every final outcome that is not a failure: succeeded tasks and the sweep
    trials that ``diverged`` (a non-finite objective, ``shardq.core.verdicts``), which are also
    counted apart, as ``JobView`` does; ``done + failed`` is every recorded outcome.
    """

    round: int
    phase: str
    total: int
    enqueued: int
    done: int
    failed: int
    diverged: int = 0
    # What the phase's counted outcomes cost (USD; ``shardq.core.spend``).
    cost_usd: float = 0.0

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
            "diverged": self.diverged,
            "cost_usd": self.cost_usd,
        }


def progress(job: JobRecord) -> list[PhaseProgress]:
    """Per (round, phase) counters from round 0 to the job's current phase, in order."""
    rows: list[PhaseProgress] = []
    if fedbuff_view.fedbuff.applies(job.request):  # one row per version (its updates) and reduce
        return [PhaseProgress(**row) for row in fedbuff_view.phase_rows(job)]
    if job.request.asynchronous:
        # Every rung runs at once: one row each; its total the most it may run. Once the job
        # ended, what it ran, sent included: a task the end cut short has no outcome and none will
        # count (``JobStore.freeze_ending``), so sent ≤ total and nothing is outstanding.
        return [
            PhaseProgress(
                round=r,
                phase="train",
                total=job.done(r, "train") if job.terminal else size,
                enqueued=min(job.enqueued(r, "train"), job.done(r, "train"))
                if job.terminal
                else job.enqueued(r, "train"),
                done=job.ok(r, "train") + job.diverged(r, "train"),
                failed=job.failed(r, "train"),
                diverged=job.diverged(r, "train"),
                cost_usd=job.counters.get(("usd", r, "train"), 0) / 1_000_000,
            )
            for r, size in enumerate(rung_bounds(job.request))
        ]
    for r in range(job.round + 1):
        phases = ["train"]
        if job.kind == "data_parallel" and (r < job.round or job.phase == "reduce"):
            phases.append("reduce")
        rows.extend(
            PhaseProgress(
                round=r,
                phase=phase,
                total=job.expected(r, phase),
                enqueued=job.enqueued(r, phase),
                done=job.ok(r, phase) + job.diverged(r, phase),
                failed=job.failed(r, phase),
                diverged=job.diverged(r, phase),
                cost_usd=job.counters.get(("usd", r, phase), 0) / 1_000_000,
            )
            for phase in phases
        )
    return rows


def failed_outcomes(
    engine: Engine, job_id: str, round_no: int | None = None, phase: str | None = None
) -> list[ResultRecord]:
    """Recorded failed outcomes of a job (optionally of one round and phase), in key order."""
    return engine.store.failed_results(job_id, round_no, phase)


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
    # A big map round still closing in ranges: the job ends CANCELLED when the last is stored.
    closing_ranges: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return dict(self.__dict__)


def cancel(engine: Engine, job_id: str) -> CancelReport:
    """Move a RUNNING job to CANCELLED, and say what is still in flight.

    ``JobStore.request_cancel`` marks the job first: workers drop its queued tasks unrun from
    then on (tasks a worker already holds run to the end; their results are recorded without
    moving the job). Then ``Engine.advance`` ends it: the manifest of what finished is written
    and the ``Job Finished`` event goes out once. A map round too big for one invocation closes
    in ranges first (the splitter's, where the engine hands them out): the job is CANCELLED
    when the last range is stored, and ``closing_ranges`` says how many. Any later ``advance``
    (an aggregator's, a second ``cancel``) finishes a cancel that was cut short. Raises
    ``JobNotFound``; a job that already finished is reported, not changed.
    """
    job = engine.store.get_job(job_id)
    cancelled = False
    closing = 0
    if job.status == "WAITING":  # a pipeline job that never started (shardq.core.pipeline)
        cancelled = pipeline.cancel_waiting(engine, job)
        job = engine.store.get_job(job_id)
    if job.status == "RUNNING":
        engine.store.request_cancel(job_id)
        status = engine.advance(job_id)
        job = engine.store.get_job(job_id)
        # RUNNING: marked, its round still closing in ranges; another status: it ended otherwise first.
        cancelled = status in ("CANCELLED", "RUNNING")
        if status == "RUNNING" and job.closed_round == job.round:
            ranges = close_ranges(job.kind, job.task_count, engine.advancer.range_shards)
            closing = ranges - job.ranges_done(job.round)
    current = [p for p in progress(job) if p.round == job.round and p.phase == job.phase]
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
        status=job.status,
        cancelled=cancelled,
        round=job.round,
        phase=job.phase,
        outstanding=outstanding,
        queue_in_flight=in_flight,
        closing_ranges=closing,
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
    sent again too. Steps, each safe to repeat:

    1. ``JobStore.forget_failures``, one transaction per chunk: the failed outcome items are
       deleted and their ``fail`` counters and ``failed_total`` decremented, conditional on the
       job still being where it was; each chunk's shard ids wait in a pending item.
    2. ``Engine.reopen``: a FAILED job goes back to RUNNING (clearing what ``finalize`` set).
    3. The tasks go back on the queue with a fresh deduplication id (generation
       ``retry_generation``), from the task body kept on the outcome item when there is one,
       else re-planned; the pending items are deleted; then the job is advanced.

    Order matters: outcomes are deleted *before* the tasks are sent, so a fast worker's new
    result is never taken for a duplicate of the old failure; a crash between the steps is
    repaired by running the retry again (the shards still wait in their pending items). Each
    shard sent again carries a retry mark of its generation from before the job runs again: an
    older copy of its task that fails later (still on a worker, or dead-lettered) is recorded as
    late, never as the shard's failure; an older copy's success still counts (first one wins).

    Failures of rounds that already finished stay counted (their rounds moved on); when they
    alone exceed ``max_failed_shards`` the retry is refused, since the job would fail again.

    Raises ``JobNotFound`` or ``OperationError``.
    """
    job = engine.store.get_job(job_id)
    if pipeline.never_started(job):  # its request was never resolved from the job it follows
        raise OperationError(
            f"job {job_id} never started: {job.error or 'it waited for the job it follows'}; nothing of it "
            "ran to retry. Retry or rerun the upstream job, then submit this request under a new job_id"
        )
    refused = spend.retry_refusal(job)  # every kind alike: a spent budget stays spent
    if refused is not None:
        raise OperationError(refused)
    if job.request.asynchronous and job.status in ("RUNNING", "FAILED"):
        return _retry_async(engine, job)
    if fedbuff_view.fedbuff.applies(job.request) and job.status in ("RUNNING", "FAILED"):
        return _retry_fedbuff(engine, job)
    rows = _check_retryable(engine, job)
    try:
        generation = engine.store.next_retry_generation(job_id, job.status)
        shards = [r.result.shard_id for r in rows]
        for i in range(0, len(shards), RETRY_CHUNK):
            # The forgotten failures' cost stays the job's (the time was spent): say how much.
            spent = sum(r.result.cost_micro_usd for r in rows[i : i + RETRY_CHUNK])
            engine.store.forget_failures(job, shards[i : i + RETRY_CHUNK], generation, spent)
    except JobChanged as exc:
        raise OperationError(f"{exc}; run `shardq status` and retry again") from exc
    bodies = _retry_bodies(engine, job, rows)
    # Every shard sent again is marked with the generation before the job runs again and before
    # its task goes out, so an older copy's failure is late, not the shard's (``store.retried``);
    # ``forget_failures`` marked the forgotten ones in its own transactions.
    forgotten = {r.result.shard_id for r in rows}
    others = [shard for shard in bodies if shard not in forgotten]
    engine.store.mark_retried(job_id, job.round, job.phase, others, generation)
    if job.status == "FAILED":
        engine.reopen(job_id)
    engine.enqueuer.resend(job, bodies, generation)
    engine.store.retry_sent(job_id, bodies)
    return RetryReport(
        job_id=job_id,
        round=job.round,
        phase=job.phase,
        generation=generation,
        retried=sorted(bodies),
        status=engine.advance(job_id),
    )


def _retry_async(engine: Engine, job: JobRecord) -> RetryReport:
    """Retry an asynchronous sweep's failed tasks, of every rung (``AsyncSweep.retry``): decided
    again under a fresh generation, the job reopened, then advanced, which sends them."""
    try:
        retried = engine.advancer.sweeps().retry(job)
    except (AsyncSweepError, JobChanged) as exc:
        reason = f" ({job.error})" if job.error else ""
        raise OperationError(f"{exc}{reason}; see `shardq status` and the result manifest") from exc
    if job.status == "FAILED":
        engine.reopen(job.job_id)
    return RetryReport(
        job_id=job.job_id,
        round=job.round,
        phase=job.phase,
        generation=engine.store.get_job(job.job_id).retry_generation,
        retried=sorted({trial for _, trial in retried}),
        status=engine.advance(job.job_id),
    )


def _retry_fedbuff(engine: Engine, job: JobRecord) -> RetryReport:
    """Retry a FedBuff job: its failed updates forgiven, each client's cut-off task sent again
    (``shardq.core.fedbuff_retry``); ``retried`` lists the clients."""
    try:
        generation, clients = fedbuff_retry.retry(engine, job)
    except (fedbuff_retry.NothingToRetry, JobChanged) as exc:
        reason = f" ({job.error})" if job.error else ""
        raise OperationError(f"{exc}{reason}; run `shardq status` and retry again") from exc
    return RetryReport(
        job_id=job.job_id,
        round=job.round,
        phase=job.phase,
        generation=generation,
        retried=clients,
        status=engine.advance(job.job_id),
    )


def _check_retryable(engine: Engine, job: JobRecord) -> list[ResultRecord]:
    """The failed outcomes a retry of ``job`` would redo; OperationError when there is nothing to
    retry or the retry could only fail again."""
    if job.status not in ("RUNNING", "FAILED"):
        raise OperationError(
            f"job {job.job_id} is {job.status}: only a FAILED job or a RUNNING job with failed shards can "
            "be retried; submit the request again under a new job_id instead"
        )
    rows = failed_outcomes(engine, job.job_id, job.round, job.phase)
    if (
        not rows
        and not engine.store.retry_pending(job.job_id)
        and not (job.status == "FAILED" and _unrun(engine, job))
    ):
        reason = f" ({job.error})" if job.error else ""
        raise OperationError(
            f"job {job.job_id} has no failed tasks in round {job.round} ({job.phase}) to retry{reason}; "
            "see `shardq status` and the result manifest"
        )
    if job.phase == "train":
        earlier = job.failed_total - len(rows)
        if earlier > job.max_failed_shards:
            raise OperationError(
                f"job {job.job_id}: {earlier} failed shards of finished rounds exceed "
                f"max_failed_shards={job.max_failed_shards} on their own, so a retry would fail the job "
                "again; submit the request again instead"
            )
    return rows


def _retry_bodies(engine: Engine, job: JobRecord, rows: list[ResultRecord]) -> dict[int, str | None]:
    """Shard → the task body to send again (None: plan it anew)."""
    bodies: dict[int, str | None] = {r.result.shard_id: r.task_body for r in rows}
    for shard in sorted(engine.store.retry_pending(job.job_id)):
        bodies.setdefault(shard, None)
    if job.status == "FAILED":
        # A job that failed mid-phase had its other queued tasks dropped unrun by the workers
        # (they skip finished jobs' tasks): send those again too, or the phase never completes.
        # One still on the queue would run twice; its second result is a duplicate and dropped.
        for shard in _unrun(engine, job):
            bodies.setdefault(shard, None)
    return bodies


def _unrun(engine: Engine, job: JobRecord) -> list[int]:
    """Tasks of the job's current (round, phase) with no recorded outcome at all: of a rung, the
    trials the closed rung before promoted (its stored plan), not every trial of the sweep."""
    recorded = {r.result.shard_id for r in engine.store.results(job.job_id, job.round, job.phase)}
    planned = engine.store.planned_tasks(job, job.round, job.phase)
    if job.window is not None:
        # A windowed job sent only up to its cursor: the tasks past it were never sent (nor
        # dropped), and its window sends them once the job runs again, each once.
        planned = planned[: job.enqueued(job.round, job.phase)]
    return [shard for shard, _ in planned if shard not in recorded]


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
