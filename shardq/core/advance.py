"""Record and advance: count each outcome once, then move the job as far as its counts allow.

* Every outcome is counted once: result item and counter increment share one DynamoDB
  transaction (``JobStore.record``); outcomes of tasks the job never planned are rejected.
* Actions happen *before* the transition that records them (enqueue the next round, then
  move the job to it), so a crash in between is repaired by the redelivered result that
  triggers ``advance`` again; transitions are conditional, so two racing aggregators move a
  job once.

A big map round's close in ranges is ``shardq.core.ranged_close`` (a mixin of ``Advancer``; its
names are re-exported here).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from shardq.core import async_sweep, fedbuff, over_budget, planning, rounds, search, spend, verdicts
from shardq.core.artifacts import put_json
from shardq.core.contracts import ShardResult, TrainingRequest, ValidationError
from shardq.core.enqueue import EnqueueIncomplete, Enqueuer
from shardq.core.finalize import Finisher
from shardq.core.jobstore import Cursor, JobRecord, JobStore, Outcome, RecordOutcome
from shardq.core.metrics import reduce_inputs, summarize_round
from shardq.core.ranged_close import (  # re-exported (``__all__``): callers import them here
    CLOSE_KEY,
    CLOSE_RANGE_LEASE_S,
    CLOSE_RANGE_MARGIN_S,
    CLOSE_RANGE_SHARDS,
    CloseRangeIncomplete,
    RangedClose,
    RangeDispatch,
    close_ranges,
    lambda_range_dispatch,
)
from shardq.core.side_by_side import both
from shardq.core.sweep_cache import SweepCache

# Jobs whose shape (task count, rounds, kind) an advancer remembers before starting over.
SHAPE_CACHE_SIZE = 1024
# How long a round's close is claimed by a caller without a deadline (the CLI); a Lambda claims it
# until its own deadline, after which it is surely dead.
CLOSE_LEASE_S = 120.0
MetricSink = Callable[[str, float, str], None]
# The error a job cancelled by ``JobStore.request_cancel`` ends with.
CANCELLED_BY_OPERATOR = "cancelled by an operator (shardq cancel)"


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


def results_message(body: str) -> Outcome | rounds.Tick:
    """A results-queue message → the outcome it reports, or a round deadline's tick.

    Raises ValidationError for anything else (malformed JSON, a body that names no task).
    A result the parser rejects but that names a task (job, round, shard, type) is that task's
    failed outcome, with the parser's reasons (``verdicts.rejected``): redelivering it could
    only be rejected again, while its job waited for the shard.
    """
    if rounds.TICK_KEY in body:
        data = json.loads(body)
        if isinstance(data, dict) and rounds.TICK_KEY in data:
            return rounds.Tick.parse(data)
    notice = spend.parse_notice(body)
    if notice is not None:
        return notice
    try:
        return Outcome(result=ShardResult.from_json(body))
    except ValidationError as exc:
        failed = verdicts.rejected(body, exc)
        if failed is None:
            raise
        return Outcome(result=failed, source=verdicts.REJECTED_SOURCE)


def _all_diverged(results: Sequence[ShardResult]) -> bool:
    """No trial succeeded and at least one diverged (the rest failed within the budget)."""
    return not any(r.status == "succeeded" for r in results) and any(r.status == "diverged" for r in results)


@dataclass
class Advancer(RangedClose):
    """Records outcomes and moves jobs through their rounds and phases.

    Parameters
    ----------
    store, enqueuer, finisher:
        The job store, the task sender and the job finisher.
    ticker, clock:
        The round deadlines' clock (``shardq.core.rounds``) and the wall clock.
    bucket:
        The artifact bucket (a round's reduce inputs go there by claim check).
    metric:
        Business-metric sink.
    dispatch_ranges:
        Hands a big map round's close ranges to other invocations (the Lambdas: an async
        invocation of the splitter per range); None runs them here, one after another.
    range_shards:
        Shards per close range (``CLOSE_RANGE_SHARDS``); a round of at most this many closes at once.
    """

    store: JobStore
    enqueuer: Enqueuer
    finisher: Finisher
    bucket: str
    metric: MetricSink
    ticker: rounds.Ticker
    clock: Callable[[], float]
    dispatch_ranges: RangeDispatch | None = None
    range_shards: int = CLOSE_RANGE_SHARDS
    # A job's request never changes: read once per warm container, not per batch.
    _requests: dict[str, TrainingRequest] = field(init=False, default_factory=dict, repr=False)
    _participants: dict[tuple[str, int], frozenset[int]] = field(init=False, default_factory=dict, repr=False)
    # Asynchronous sweeps' decisions and results read so far (each pass reads what changed).
    _sweep_cache: SweepCache | None = field(init=False, default=None, repr=False)
    # Each sweep's latest wake-up tick armed by this container (``_wake``).
    _wakes: dict[str, float] = field(init=False, default_factory=dict, repr=False)
    # Fewer calls on a round's critical path (BENCHMARKS.md §14): the job as this call's last move
    # left it (the move's ALL_NEW image, read instead of the job), and the reduce outcomes ``ingest``
    # recorded just before it advances their job (written once: what a query would read back).
    _moved: dict[str, JobRecord] = field(init=False, default_factory=dict, repr=False)
    _reduced: dict[tuple[str, int], ShardResult] = field(init=False, default_factory=dict, repr=False)

    def record(self, outcomes: list[Outcome], *, deadline: float | None = None) -> RecordOutcome:
        """Record outcomes exactly once; see ``JobStore.record`` (a priced outcome's cost reaches
        its job and its tenant's month in the same transaction: ``spend.tenants_of``)."""
        tenants = spend.tenants_of(outcomes, self._request)
        result = self.store.record(outcomes, deadline=deadline, tenants=tenants)
        if result.duplicates:
            replaced = {id(o) for o in self._settle_copies(result.duplicates, tenants)}
            result.recorded.extend(o for o in result.duplicates if id(o) in replaced)
            result.duplicates = [o for o in result.duplicates if id(o) not in replaced]
        if self.enqueuer.admission is not None:
            self.enqueuer.admission.observe(result.recorded)  # each window's depth (core.depth)
        self.metric("ResultsRecorded", len(result.recorded), "Count")
        if result.duplicates:
            self.metric("DuplicateResults", len(result.duplicates), "Count")
        if result.late:
            self.metric("LateResults", len(result.late), "Count")
        return result

    def _settle_copies(self, duplicates: list[Outcome], tenants: dict[str, str]) -> list[Outcome]:
        """What an asynchronous sweep's duplicate outcome still owes its job (``store.copies``): a
        copy's success replaces the other copy's counted failure, once, while the job runs; else
        a run that lost adds its cost to the job and its tenant's month once per run, also after
        the job ended, so the job's cost is every priced run's. Returns the replacing outcomes."""
        replaced: list[Outcome] = []
        for o in duplicates:
            r = o.result
            if r.task_type != "train" or not async_sweep.is_async(self._request(r.job_id)):
                continue
            tenant = tenants.get(r.job_id)
            if r.status != "failed" and self.store.replace_failed_copy(o, tenant):
                replaced.append(o)
                self.metric("BackupFailuresReplaced", 1, "Count")
            elif r.cost_micro_usd > 0 and self.store.count_copy_cost(r, tenant):
                self.metric("BackupCopiesCosted", 1, "Count")
        return replaced

    def advance(self, job_id: str, *, deadline: float | None = None) -> str:
        """Move a job as far as its recorded results and its round policy allow; returns its status.

        Safe to call any number of times from any number of invocations.
        """
        self._moved.pop(job_id, None)  # only a move of this call stands in for a read
        while True:
            job = self._moved.pop(job_id, None) or self.store.get_job(job_id)
            if job.terminal:
                if job.event_pending:
                    self.finisher.publish_finished(job)
                return job.status
            job = spend.stop_if_spent(self.store, job, spend.monthly_budget(self.enqueuer.admission, job))
            ending = self._cut_short(job) or job.frozen_as()
            if ending is not None:
                # Freeze first (nothing counts from here on), then read, then end: the manifest and
                # the record `status` reads hold the same outcomes (``JobStore.freeze_ending``).
                frozen = job if job.ending is not None else self.store.freeze_ending(job_id, *ending)
                if frozen is None:
                    continue  # it ended meanwhile: look again
                job, ending = frozen, self._cut_short(frozen) or ending
                if async_sweep.is_async(job.request):
                    self.sweeps().summarize_rungs(job)  # its rung history, as a sweep run to its end
                if not self._ranged(job):
                    return self.finisher.finalize(job, *ending)
                # A big map round's manifest needs its ranges: freeze the round, close it so.
                if not self._train_done(job, deadline, ending):
                    return self.store.get_job(job_id).status
                continue
            if async_sweep.is_async(job.request):
                # An asynchronous sweep (ASHA) has no rounds to close: each result frees a slot.
                return self.sweeps().advance(job, deadline=deadline)
            if fedbuff.applies(job.request):
                # FedBuff has no round barrier: a full buffer closes its version (shardq.core.fedbuff).
                if not fedbuff.Driver(self).step(job, deadline):
                    return self.store.get_job(job_id).status
                continue
            # Refill the job's window as its results are counted (shardq.core.admission).
            self.enqueuer.top_up(job, deadline=deadline)
            decision = rounds.verdict(job, self.clock())
            if isinstance(decision, rounds.RoundFailed):
                frozen = self.store.freeze_ending(job_id, "FAILED", decision.message)
                return self.finisher.finalize(frozen or job, "FAILED", decision.message)
            if decision == rounds.WAIT:
                return job.status
            moved = (
                self._train_done(job, deadline) if job.phase == "train" else self._reduce_done(job, deadline)
            )
            if not moved:
                return self.store.get_job(job_id).status

    def sweeps(self) -> async_sweep.AsyncSweep:
        """The driver of asynchronous sweeps, over this advancer's store, sender and finisher, and
        what this container read of them before (``shardq.core.sweep_cache``)."""
        return async_sweep.AsyncSweep(
            self.store, self.enqueuer, self.finisher, self.bucket, self.metric, self.sweep_cache(), self._wake
        )

    def _wake(self, job_id: str, at: float) -> None:
        """Deliver a tick to an asynchronous sweep at ``at`` (``AsyncSweep.wake``): its pass then
        sees a straggler no result would show. Once per container while an earlier one is due."""
        armed = self._wakes.get(job_id)
        if armed is not None and self.clock() < armed <= at + 1.0:
            return
        self._wakes[job_id] = at
        self.ticker.arm(rounds.Tick(job_id, 0, at))

    def sweep_cache(self) -> SweepCache:
        """This container's cache of asynchronous sweeps (made on first use)."""
        if self._sweep_cache is None:
            self._sweep_cache = SweepCache(self.store)
        return self._sweep_cache

    def _cut_short(self, job: JobRecord) -> tuple[str, str] | None:
        """How a running job ends before its rounds do, if it does: cancelled by an operator,
        failed over its failure budget, or stopped by its spend budget once its running tasks
        finished (``spend.ending``); None: it goes on."""
        if job.cancel_requested_at is not None:
            return "CANCELLED", CANCELLED_BY_OPERATOR
        if job.failed_total > job.max_failed_shards:
            return "FAILED", self._over_budget(job)
        return spend.ending(job)

    def _over_budget(self, job: JobRecord) -> str:
        """Why the job failed: its failure count, and the first failure's own words."""
        return over_budget.message(self.store, job)

    def _ranged(self, job: JobRecord) -> bool:
        """True when the job's round closes in ranges (a map round of more than ``range_shards``)."""
        return close_ranges(job.kind, job.task_count, self.range_shards) > 0

    def _train_done(
        self, job: JobRecord, deadline: float | None, ending: tuple[str, str | None] = ("SUCCEEDED", None)
    ) -> bool:
        """The round's training closed: summarize; finish, or enqueue the reduce.

        One invocation does this work, under a claim that lasts until its own deadline (a claim
        past its time is taken over; an invocation that fails gives it back at once). The round
        is frozen first (``close_round``), so the outcomes read here are all it will ever count;
        a result that arrives later is recorded as late.
        """
        now = self.clock()
        until = deadline if deadline is not None else now + CLOSE_LEASE_S
        if not self.store.claim_close(job.job_id, job.round, now, until):
            return False  # another invocation is closing it (or the job moved): its work, not ours
        try:
            # The claim froze the round (``claim_close``): no separate close_round call.
            return self._close(replace(job, closed_round=job.round), deadline, ending)
        except BaseException:
            self.store.release_close(job.job_id, job.round)
            raise

    def _close(self, job: JobRecord, deadline: float | None, ending: tuple[str, str | None]) -> bool:
        round_no = job.round
        if job.closed_round != round_no and not self.store.close_round(job.job_id, round_no):
            return True  # the job moved meanwhile: look again
        if self._ranged(job):
            return self._close_in_ranges(job, ending)
        if job.kind == "map":
            # One pass over the round, one query page in memory at a time.
            rows = self.store.iter_results(job.job_id, round_no, "train")
            summary = summarize_round(round_no, (row.result for row in rows), job.round_started_at)
            self.store.put_round_summary(job.job_id, round_no, summary)
            self.finisher.finalize(job, "SUCCEEDED")
            return False
        results = [row.result for row in self.store.results(job.job_id, round_no)]
        summary = summarize_round(round_no, results, job.round_started_at)
        if job.kind == "data_parallel":
            return self._reduce_next(job, results, deadline, summary)
        self.store.put_round_summary(job.job_id, round_no, summary)
        if job.kind == "sweep" and round_no + 1 < job.rounds:
            return self._next_rung(job, results, deadline)
        if job.kind == "sweep" and job.rounds == 1 and ending[0] == "SUCCEEDED" and _all_diverged(results):
            # No trial has a finite objective: nothing to rank, nothing to use. FAILED says so, as a
            # halving sweep's first rung does; retrying would diverge again, so the fix is the space.
            objective = job.request.objective
            metric = objective.metric if objective is not None else "the objective"
            self.finisher.finalize(
                job,
                "FAILED",
                f"every trial diverged or failed: none has a finite {metric}; narrow the search space "
                "(e.g. lower learning rates) and submit again",
            )
            return False
        self.finisher.finalize(job, "SUCCEEDED")
        return False

    def _reduce_next(
        self, job: JobRecord, results: list[ShardResult], deadline: float | None, summary: dict[str, Any]
    ) -> bool:
        """A data_parallel round's training closed: store its summary and, side by side with it,
        the reduce's inputs (claim check) and then its task; then move the job to its reduce."""
        round_no = job.round
        inputs = reduce_inputs(results)
        if not inputs["models"]:
            self.store.put_round_summary(job.job_id, round_no, summary)
            self.finisher.finalize(job, "FAILED", f"round {round_no} produced no shard model to reduce")
            return False
        layout = planning.Layout(self.bucket, job.job_id)

        sent: list[Cursor] = []  # the send's cursor, written by the move

        def send_reduce() -> None:
            put_json(self.enqueuer.s3, self.bucket, layout.reduce_inputs_key(round_no), inputs)
            self.enqueuer.enqueue(job, round_no, "reduce", job.model_uri, deadline=deadline, defer=sent)

        both(send_reduce, lambda: self.store.put_round_summary(job.job_id, round_no, summary))
        self._remember(self.store.start_reduce(job.job_id, round_no, sent[0] if sent else None))
        return True

    def _remember(self, moved: JobRecord | None) -> None:
        """Keep the job as this call's move left it, for the next pass of ``advance``'s loop."""
        if moved is not None:
            self._moved[moved.job_id] = moved

    def _next_rung(self, job: JobRecord, results: list[ShardResult], deadline: float | None) -> bool:
        """A successive-halving rung closed: promote its best trials to the next rung, or end.

        With nothing to promote, a later rung whose every trial diverged ends the sweep SUCCEEDED:
        divergence is an outcome, not a failure, and the rungs before it ranked finite trials (the
        manifest's best). Otherwise (rung 0, or a failed trial a retry could still train) it fails.
        """
        round_no = job.round
        promoted = search.promote(job.request, results)
        if not promoted and round_no > 0 and all(r.status == "diverged" for r in results):
            self.finisher.finalize(job, "SUCCEEDED")
            return False
        if not promoted:
            self.finisher.finalize(
                job, "FAILED", f"no trial of rung {round_no} succeeded with the objective's metric"
            )
            return False
        if not job.has_plan(round_no + 1):
            self.store.put_round_plan(job, round_no + 1, promoted)
            job = self.store.get_job(job.job_id)
        self.enqueuer.enqueue(job, round_no + 1, "train", None, deadline=deadline)
        self._remember(self.store.start_round(job.job_id, round_no + 1, None, after="train"))
        return True

    def _reduce_done(self, job: JobRecord, deadline: float | None) -> bool:
        """The round's reduce has its outcome: finish, or enqueue the next round from its model."""
        round_no = job.round
        fresh = self._reduced.pop((job.job_id, round_no), None)  # recorded by this call: no query
        reduced = (
            [fresh]
            if fresh is not None
            else [row.result for row in self.store.results(job.job_id, round_no, "reduce")]
        )
        if not reduced or reduced[0].status != "succeeded":
            error = reduced[0].error if reduced else "no reduce result"
            self.finisher.finalize(job, "FAILED", f"reduce of round {round_no} failed: {error}")
            return False
        model_uri = reduced[0].model

        # What the reduce reported (e.g. the global model's held-out accuracy) joins the round's
        # summary, so the manifest and the dashboard show it per round. Idempotent; side by side
        # with the next round's send, both before the move that records them.
        def summarize() -> None:
            self.store.add_to_round_summary(
                job.job_id, round_no, {"reduce": {"metrics": reduced[0].metrics, "model_uri": model_uri}}
            )

        self.finisher.round_finished(job)
        if round_no + 1 >= job.rounds:
            summarize()
            self.store.set_final_model(job.job_id, round_no, model_uri)
            self.finisher.finalize(self.store.get_job(job.job_id), "SUCCEEDED")
            return False
        sent: list[Cursor] = []  # the send's cursor, written by the move
        both(
            lambda: self.enqueuer.enqueue(
                job, round_no + 1, "train", model_uri, deadline=deadline, defer=sent
            ),
            summarize,
        )
        moved = self.store.start_round(job.job_id, round_no + 1, model_uri, cursor=sent[0] if sent else None)
        self._remember(moved)
        if moved is not None:
            self.ticker.arm_round(moved)  # reads nothing: the move returned the job
        return True

    def ingest(
        self,
        items: Sequence[Outcome | rounds.Tick],
        *,
        deadline: float | None = None,
        hand_on: Callable[[str], None] | None = None,
    ) -> list[tuple[Outcome | rounds.Tick, Exception]]:
        """Record outcomes and advance their jobs, job by job; returns the items that failed.

        One job's trouble (unknown job, throttling) fails only that job's items: the event
        source redelivers them, and the redelivery drives ``advance`` again. A next-round
        fan-out cut short by the deadline is handed on through ``hand_on(job_id)`` (an async
        splitter continuation) rather than failed, so big rounds neither wait out visibility
        timeouts nor burn the results' receive count. A ``Tick`` (a round's deadline) advances
        its job even when no result arrives.
        """
        by_job: dict[str, list[Outcome | rounds.Tick]] = {}
        for item in items:
            job_id = item.job_id if isinstance(item, rounds.Tick) else item.result.job_id
            by_job.setdefault(job_id, []).append(item)
        failed: list[tuple[Outcome | rounds.Tick, Exception]] = []
        for job_id, group in by_job.items():
            outcomes = [o for o in group if isinstance(o, Outcome)]
            ticks = [t for t in group if isinstance(t, rounds.Tick)]
            foreign: list[tuple[Outcome, Exception]] = []
            try:
                planned, foreign = self._planned(job_id, outcomes)
                if fedbuff.applies(self._requests.get(job_id)):
                    # FedBuff's train outcomes are client updates, recorded with their versions.
                    planned, unsent = fedbuff.Driver(self).ingest(
                        job_id, self._requests[job_id], planned, deadline=deadline
                    )
                    foreign += unsent
                recorded = self.record(planned, deadline=deadline)
                # The reduce results just written (once): this job's advance below need not read them.
                reduces = (o.result for o in recorded.recorded if o.result.task_type == "reduce")
                self._reduced = {(r.job_id, r.round): r for r in reduces}
                request = self._requests.get(job_id)
                if request is not None and async_sweep.is_async(request):
                    self.sweep_cache().note(job_id, (o.result for o in recorded.recorded))
                for drop in (t for t in ticks if isinstance(t, spend.Dropped)):
                    spend.count_drop(self.store, self._request(job_id), drop)
                try:
                    self.advance(job_id, deadline=deadline)
                except EnqueueIncomplete:
                    if hand_on is None:
                        raise
                    hand_on(job_id)
                for tick in ticks:
                    self.rearm(tick)
            except Exception as exc:
                rejected = {id(o) for o, _ in foreign}
                failed.extend((o, exc) for o in group if id(o) not in rejected)
            finally:
                self._reduced = {}  # stands in for a read only in the advance right after its record
            failed.extend(foreign)
        return failed

    def rearm(self, tick: rounds.Tick) -> None:
        """After ``advance``: send the tick again while its round still waits for its deadline."""
        job = self.store.get_job(tick.job_id)
        if not job.terminal and job.round == tick.round and job.phase == "train" and tick.due > self.clock():
            self.ticker.arm(tick)

    def _request(self, job_id: str) -> TrainingRequest:
        """A job's request (read once per warm container, like ``_planned``'s)."""
        if job_id not in self._requests:
            if len(self._requests) >= SHAPE_CACHE_SIZE:
                self._requests.clear()
                self._participants.clear()
            self._requests[job_id] = self.store.get_job(job_id).request
        return self._requests[job_id]

    def _planned(
        self, job_id: str, outcomes: list[Outcome]
    ) -> tuple[list[Outcome], list[tuple[Outcome, Exception]]]:
        """Split outcomes into those of tasks the job planned and those it never did.

        A result for a shard, round or task type the job does not have (a foreign or forged
        message, or a shard that does not take part in that round) must never be counted: it
        would complete a round whose real shards are still running. It is rejected with the
        reason and goes the way of malformed records.
        """
        if outcomes and job_id not in self._requests:
            if len(self._requests) >= SHAPE_CACHE_SIZE:
                self._requests.clear()
                self._participants.clear()
            self._requests[job_id] = self.store.get_job(job_id).request
        keep: list[Outcome] = []
        foreign: list[tuple[Outcome, Exception]] = []
        for o in outcomes:
            problem = self._foreign(job_id, o)
            if problem is None:
                # A non-finite objective: a sweep trial diverged; a non-finite metric in any other
                # task: failed (verdicts.vet).
                request = self._requests[job_id]
                objective = request.objective.metric if request.objective is not None else None
                vetted = verdicts.vet(o.result, request.kind, objective)
                keep.append(o if vetted is o.result else replace(o, result=vetted))
            else:
                foreign.append((o, ValidationError("ShardResult", [problem])))
        return keep, foreign

    def _foreign(self, job_id: str, outcome: Outcome) -> str | None:
        request = self._requests[job_id]
        r = outcome.result
        if r.task_type == "train" and fedbuff.applies(request):
            return fedbuff.foreign(request, job_id, outcome)  # its n-th update is "round" n
        problem = foreign_outcome((request.task_count, request.round_count, request.kind), job_id, outcome)
        if problem is None and r.task_type == "train" and async_sweep.is_async(request):
            return self._undecided(job_id, r)
        sampled = request.participation is not None or (request.early_stopping is not None and r.round > 0)
        if problem is None and r.task_type == "train" and sampled:
            key = (job_id, r.round)
            takers = self._participants.get(key) or self._takers(job_id, request, r.round)
            if takers:  # an empty set (a rung not planned yet) is not remembered
                self._participants[key] = takers
            if r.shard_id not in takers:
                problem = f"shard {r.shard_id} does not take part in round {r.round} of job {job_id}"
        return problem

    def _undecided(self, job_id: str, r: ShardResult) -> str | None:
        """Why an asynchronous sweep's result is foreign: no decision ran that trial at that rung
        (the container's cache, else the one decision item)."""
        if not self.sweep_cache().is_decided(job_id, r.round, r.shard_id):
            return f"shard {r.shard_id} does not take part in round {r.round} of job {job_id}"
        return None

    def _takers(self, job_id: str, request: TrainingRequest, round_no: int) -> frozenset[int]:
        """The shards (or promoted trials) that train in ``round_no``."""
        if request.early_stopping is not None:
            # A rung not yet planned has no takers yet: its results cannot be real.
            return frozenset(shard for shard, _ in self.store.round_plan(job_id, round_no))
        return frozenset(planning.participants(request, round_no))


__all__ = [
    "CANCELLED_BY_OPERATOR",
    "CLOSE_KEY",
    "CLOSE_LEASE_S",
    "CLOSE_RANGE_LEASE_S",
    "CLOSE_RANGE_MARGIN_S",
    "CLOSE_RANGE_SHARDS",
    "SHAPE_CACHE_SIZE",
    "Advancer",
    "CloseRangeIncomplete",
    "MetricSink",
    "RangeDispatch",
    "close_ranges",
    "foreign_outcome",
    "lambda_range_dispatch",
    "results_message",
]
