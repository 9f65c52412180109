"""Record and advance: count each outcome once, then move the job as far as its counts allow.

* Every outcome is counted once: result item and counter increment share one DynamoDB
  transaction (``JobStore.record``); outcomes of tasks the job never planned are rejected.
* Actions happen *before* the transition that records them (enqueue the next round, then
  move the job to it), so a crash in between is repaired by the redelivered result that
  triggers ``advance`` again; transitions are conditional, so two racing aggregators move a
  job once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from shardq.core import planning
from shardq.core.artifacts import put_json
from shardq.core.contracts import ValidationError
from shardq.core.enqueue import EnqueueIncomplete, Enqueuer
from shardq.core.finalize import Finisher
from shardq.core.jobstore import JobRecord, JobStore, Outcome, RecordOutcome
from shardq.core.metrics import reduce_inputs, summarize_round

# Jobs whose shape (task count, rounds, kind) an advancer remembers before starting over.
SHAPE_CACHE_SIZE = 1024

MetricSink = Callable[[str, float, str], None]


def foreign_outcome(shape: tuple[int, int, str], job_id: str, outcome: Outcome) -> str | None:
    """Why ``outcome`` is not a task the job planned (None when it is one).

    ``shape`` is the job's (tasks per round, rounds, kind).
    """
    shards, rounds, kind = shape
    r = outcome.result
    if r.round >= rounds:
        return f"round {r.round} does not exist: job {job_id} has {rounds} round(s)"
    if r.task_type == "train" and r.shard_id >= shards:
        return f"shard_id {r.shard_id} does not exist: job {job_id} has {shards} tasks per round"
    if r.task_type == "reduce" and (kind != "data_parallel" or r.shard_id != 0):
        return f"job {job_id} ({kind}) has no reduce task {r.shard_id} in round {r.round}"
    return None


@dataclass
class Advancer:
    """Records outcomes and moves jobs through their rounds and phases.

    Parameters
    ----------
    store, enqueuer, finisher:
        The job store, the task sender and the job finisher.
    bucket:
        The artifact bucket (a round's reduce inputs go there by claim check).
    metric:
        Business-metric sink.
    """

    store: JobStore
    enqueuer: Enqueuer
    finisher: Finisher
    bucket: str
    metric: MetricSink
    # A job's task count, rounds and kind never change: read once per warm container, not per batch.
    _shapes: dict[str, tuple[int, int, str]] = field(init=False, default_factory=dict, repr=False)

    def record(self, outcomes: list[Outcome], *, deadline: float | None = None) -> RecordOutcome:
        """Record outcomes exactly once; see ``JobStore.record``."""
        result = self.store.record(outcomes, deadline=deadline)
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
            if job.terminal:
                if job.event_pending:
                    self.finisher.publish_finished(job)
                return job.status
            if job.failed_total > job.max_failed_shards:
                return self.finisher.finalize(
                    job,
                    "FAILED",
                    f"{job.failed_total} shards failed, over max_failed_shards={job.max_failed_shards}",
                )
            if job.done(job.round, job.phase) < job.expected(job.phase):
                return job.status
            moved = (
                self._train_done(job, deadline) if job.phase == "train" else self._reduce_done(job, deadline)
            )
            if not moved:
                return self.store.get_job(job_id).status

    def _train_done(self, job: JobRecord, deadline: float | None) -> bool:
        """Every train task of the round has an outcome: summarize; finish, or enqueue the reduce."""
        round_no = job.round
        results = [row.result for row in self.store.results(job.job_id, round_no)]
        self.store.put_round_summary(
            job.job_id, round_no, summarize_round(round_no, results, job.round_started_at)
        )
        if job.kind != "data_parallel":
            self.finisher.finalize(job, "SUCCEEDED")
            return False
        inputs = reduce_inputs(results)
        if not inputs["models"]:
            self.finisher.finalize(job, "FAILED", f"round {round_no} produced no shard model to reduce")
            return False
        layout = planning.Layout(self.bucket, job.job_id)
        put_json(self.enqueuer.s3, self.bucket, layout.reduce_inputs_key(round_no), inputs)
        self.enqueuer.enqueue(job, round_no, "reduce", None, deadline=deadline)
        self.store.start_reduce(job.job_id, round_no)
        return True

    def _reduce_done(self, job: JobRecord, deadline: float | None) -> bool:
        """The round's reduce has its outcome: finish, or enqueue the next round from its model."""
        round_no = job.round
        reduced = [row.result for row in self.store.results(job.job_id, round_no, "reduce")]
        if not reduced or reduced[0].status != "succeeded":
            error = reduced[0].error if reduced else "no reduce result"
            self.finisher.finalize(job, "FAILED", f"reduce of round {round_no} failed: {error}")
            return False
        model_uri = reduced[0].artifact_uri
        self.finisher.round_finished(job)
        if round_no + 1 >= job.rounds:
            self.store.set_final_model(job.job_id, round_no, model_uri)
            self.finisher.finalize(self.store.get_job(job.job_id), "SUCCEEDED")
            return False
        self.enqueuer.enqueue(job, round_no + 1, "train", model_uri, deadline=deadline)
        self.store.start_round(job.job_id, round_no + 1, model_uri)
        return True

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
                self.record(planned, deadline=deadline)
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
            self._shapes[job_id] = (job.task_count, job.rounds, job.kind)
        keep: list[Outcome] = []
        foreign: list[tuple[Outcome, Exception]] = []
        for o in outcomes:
            problem = foreign_outcome(self._shapes[job_id], job_id, o)
            if problem is None:
                keep.append(o)
            else:
                foreign.append((o, ValidationError("ShardResult", [problem])))
        return keep, foreign
