"""Open-ended sweeps: on each recorded result decide the next tasks, exactly once, up to
``max_parallel`` running (and a measured prefetch queued: ``shardq.core.async_prefetch``).

A synchronous sweep plans its trials up front and (with successive halving) closes a rung before
it promotes. An asynchronous sweep plans nothing up front: every recorded result frees a slot,
and the slot takes

1. a **promotion** when one is due: ASHA's rule (Li et al., "A System for Massively Parallel
   Hyperparameter Tuning", MLSys 2020, Algorithm 2): scanning rungs from the top down, a trial
   whose rung-``k`` result ranks in the top ``floor(n / eta)`` of the ``n`` results rung ``k`` has
   so far, and that was not promoted from it yet, trains rung ``k + 1`` from its own model
   (``init_model_uri``), with the budget the rung adds; else
2. a **new rung-0 trial** from the job's *trial source* (``TrialSource``: the next grid point,
   a new random sample while ``num_trials`` remains, or what a sampler such as Optuna asks);
3. with neither, a **backup** copy of a task running on a slow worker, when a fast free worker
   would end it sooner (``shardq.core.async_backup``: the first copy's outcome counts).

The sweep ends when nothing is in flight and nothing is promotable or drawable. At that point a
rung that promoted nobody (fewer than ``eta`` results) promotes its best trial (``rule "drain"``),
as synchronous halving promotes at least one, so the best configuration still reaches
``max_budget``. It SUCCEEDS with the manifest's best trial (the furthest rung first), or FAILS
naming the fix when no trial has a finite objective.

Exactly once. Decisions are the job's log (``JobStore.decide``, items ``ASYNC#r<rung>#<trial>``):
a pass reads ``async_seq``, the decisions and the recorded results, decides, and writes its
decisions with ``async_seq + 1`` in one transaction conditional on ``async_seq`` unchanged, the
job RUNNING and no cancel asked for. Two aggregators racing on the same state cannot both decide
(the loser reads again); a decision item exists once, so no trial is promoted twice, whatever
duplicate, late or redelivered results arrive; a non-finite objective (``diverged``) is never a
candidate; a cancelled job gets no new task. The tasks go on the queue *after* their decision
(each pass sends every decided task not yet marked sent, ``async_sent``): a crash in between is
repaired by the redelivered result's pass, and the FIFO deduplication id (``job:rung:trial:train``)
drops a second send.

Lanes. A task holds one of ``max_parallel`` FIFO message groups (``<job>:async:<lane>``), so
at most ``max_parallel`` run at once. Beside its running task a lane may hold up to a prefetch
depth of decided tasks, so a freed worker need not wait the round trip to the aggregator and
back (``shardq.core.async_prefetch``: the depth is measured from the job's records, 0 without a
measurement; a lane with nothing in flight is filled first).

What a sweep can run at most and how far it went (``rung_bounds``, ``max_tasks``,
``async_progress``) live in ``shardq.core.async_bounds`` and are re-exported here.

Parts (each re-exported here): the trial sources (``shardq.core.async_sources``: grid, list,
random, Optuna; ``register_trial_source`` plugs in another), the promotion rule over the recorded
results (``shardq.core.async_promotion``), where decided tasks wait (``async_prefetch``) and
backup copies (``async_backup``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from shardq.core import async_backup as backup
from shardq.core import async_prefetch as prefetch
from shardq.core import planning, search, spend
from shardq.core.async_bounds import AsyncProgress, async_progress, max_tasks, rung_bounds
from shardq.core.async_promotion import Promotion, by_rung, next_promotion, ranked
from shardq.core.async_sources import (
    EnumeratedSource,
    SweepRecords,
    TrialSource,
    register_trial_source,
    trial_source,
)
from shardq.core.contracts import ShardResult, TrainingRequest
from shardq.core.enqueue import Enqueuer
from shardq.core.finalize import Finisher
from shardq.core.jobstore import MAX_RETRY_CHUNK, JobRecord, JobStore, SweepDecision
from shardq.core.metrics import summarize_round
from shardq.core.store.sweeps import MAX_DECISIONS
from shardq.core.sweep_cache import SweepCache

MetricSink = Callable[[str, float, str], None]
# Passes a call makes before it gives up on a contended job (another invocation kept deciding
# first); the caller's result is redelivered and its pass runs again then.
MAX_PASSES = 8


class AsyncSweepError(RuntimeError):
    """A pass lost every race it ran (the job kept changing); the result's redelivery retries it."""


# -- the kind of sweep ----------------------------------------------------------------------------


def is_async(request: TrainingRequest) -> bool:
    """True for a sweep this module runs (``TrainingRequest.asynchronous``): ASHA, or a search
    method in ``ASYNC_SEARCH_METHODS``."""
    return request.asynchronous


@dataclass
class Pass:
    """One pass's view of the job: its decisions and recorded outcomes, and what it decides."""

    request: TrainingRequest
    decisions: list[SweepDecision]
    results: list[ShardResult]
    new: list[SweepDecision] = field(default_factory=list)
    # When a pass that left slots free should run again though no result came (``Slots.wake_at``).
    wake_at: float | None = None

    @property
    def in_flight(self) -> list[SweepDecision]:
        """Decided tasks (this pass's too) with no recorded outcome."""
        done = {(r.round, r.shard_id) for r in self.results}
        return [d for d in (*self.decisions, *self.new) if d.key not in done]

    def decided(self) -> set[tuple[int, int]]:
        return {d.key for d in (*self.decisions, *self.new)}

    def drawn(self) -> dict[int, dict[str, Any]]:
        return {
            d.trial: d.params
            for d in sorted((*self.decisions, *self.new), key=lambda d: d.trial)
            if d.rung == 0
        }


def plan_pass(
    view: Pass,
    source: TrialSource,
    seq: int,
    limit: int = MAX_DECISIONS,
    *,
    depth: int = 0,
    now: float | None = None,
    recorded: Mapping[tuple[int, int], str] | None = None,
) -> list[SweepDecision]:
    """Fill every free slot, the best lane first: a due promotion first, else a new trial; when
    nothing is in flight and nothing else can run, the drain promotion. Each lane holds its running
    task and up to ``depth`` decided ones (``shardq.core.async_prefetch``; ``now``: the pass's
    clock; ``recorded``: the outcomes' ``recorded_at``, from which it estimates when each lane
    frees). A promotion for which only a straggler's slot is free (``Slots.promotion``) waits for a
    later pass, and the slot takes a new trial. Returns the new decisions (also on ``view.new``)."""
    request = view.request
    rungs = by_rung(view.results)
    slots = prefetch.lane_slots(
        view.decisions,
        view.results,
        request.max_parallel,
        depth,
        now,
        recorded=recorded,
        added=search.rung_increments(request),
    )
    order = {k: ranked(results, request) for k, results in rungs.items()} if request.early_stopping else {}
    params = view.drawn()
    while slots.free and len(view.new) < limit:
        promo = next_promotion(request, rungs, view.decided(), order=order)
        lane = None if promo is None else slots.promotion()  # None: it waits for a better slot
        if lane is None:
            copy = _copy_first(view, slots, seq)
            if copy is not None:  # a backup that is due anyway, before the trials left (``due_now``)
                view.new.append(copy)
                slots.free = [free for free in slots.free if free != copy.lane]
                continue
            draw = _draw(view, source)
            if draw is not None:
                view.new.append(replace(draw, lane=slots.trial(), seq=seq))
                continue
            if not view.in_flight:  # nothing runs and nothing is left to draw: the sweep's end
                promo = next_promotion(request, rungs, view.decided(), drain=True, order=order)
                lane = None if promo is None else slots.promotion()
            elif promo is None:  # nothing else to run: copy a straggler's task (``async_backup``)
                lanes = slots.backup_lanes()
                copies = backup.choose(slots.suspects, [*view.decisions, *view.new], lanes, seq)
                view.new.extend(copies[: limit - len(view.new)])
                slots.free = [lane for lane in slots.free if lane not in {c.lane for c in copies}]
            if promo is None or lane is None:
                break
        assert promo is not None
        view.new.append(
            SweepDecision(
                rung=promo.rung,
                trial=promo.trial,
                lane=lane,
                seq=seq,
                params=dict(params.get(promo.trial) or promo.reported or {}),
                init_model=promo.model,
                known=promo.known,
                rank=promo.rank,
                rule=promo.rule,
            )
        )
    view.wake_at = slots.wake_at if slots.free and view.in_flight else None
    return view.new


def _copy_first(view: Pass, slots: prefetch.Slots, seq: int) -> SweepDecision | None:
    """A backup copy to decide before the next new trial (``async_backup.due_now``): with trials
    left to draw, of a straggling lane's task only (a task a slow worker presumed idle *may* have
    taken is copied only when nothing else can run: such a copy, mistaken mid-sweep, holds its
    lane as a losing copy for a slow task's time), while no slow worker is presumed idle (it
    might take the copy), into a slot outside a straggling lane. A lane a free worker takes now is
    best; else the slot a new trial would take (behind a fast lane's running task, or an empty
    spare lane), where the copy waits about one task, counted as one more trial ahead of it."""
    request = view.request
    left = request.task_count - len(view.drawn())
    lanes = slots.backup_lanes() or [lane for lane in slots.free if lane not in slots.slow]
    suspects = [s for s in slots.suspects if s.lane in slots.slow]
    if left <= 0 or slots.idle_slow or not suspects or not lanes:
        return None
    waits = 0 if lanes[0] in slots.idle else 1
    first_rung_s = prefetch.expected_times(view.results, search.rung_increments(request))(0)
    due = backup.due_now(suspects, left + waits, first_rung_s, slots.fast_workers)
    copies = backup.choose(due, [*view.decisions, *view.new], lanes[:1], seq)
    return copies[0] if copies else None


def _draw(view: Pass, source: TrialSource) -> SweepDecision | None:
    """The next rung-0 trial from the source, while ``task_count`` (``num_trials``, the grid) allows."""
    drawn = view.drawn()
    if len(drawn) >= view.request.task_count:
        return None
    params = source.next_trial(SweepRecords(view.request, drawn, view.results))
    if params is None:
        return None
    return SweepDecision(rung=0, trial=len(drawn), lane=-1, seq=0, params=dict(params))


# -- the driver ---------------------------------------------------------------------------------


@dataclass
class AsyncSweep:
    """Runs asynchronous sweeps for the aggregator (``Advancer.advance`` hands them here).

    Parameters
    ----------
    store, enqueuer, finisher:
        The job store, the task sender and the job finisher (the advancer's).
    bucket:
        The artifact bucket (task layout and claim checks).
    metric:
        Business-metric sink.
    """

    store: JobStore
    enqueuer: Enqueuer
    finisher: Finisher
    bucket: str
    metric: MetricSink
    # What the warm container read before (``shardq.core.sweep_cache``); None reads all each pass.
    cache: SweepCache | None = None
    # ``wake(job_id, at)``: run a pass at ``at`` though no result comes (the advancer's tick).
    wake: Callable[[str, float], None] | None = None

    def advance(self, job: JobRecord, *, deadline: float | None = None) -> str:
        """Decide and send what the freed slots take, or end the sweep; returns the job's status.

        Safe to call any number of times from any number of invocations (see the module doc).
        """
        request = job.request
        source = trial_source(request)
        for _ in range(MAX_PASSES):
            seen, sent = self.store.sweep_cursor(job.job_id)
            decisions, results, recorded = self._read(job, seen)
            view = Pass(request, decisions, [r for r in results if r.task_type == "train"])
            depth = prefetch.depth(decisions, view.results, recorded, request.max_parallel)
            now = self.store.stamp()  # the decisions' stamp (kept by the store): overheads count from it
            # The one gate of every send (a spent budget, a cancel): no new task, the running ones finish.
            new = (
                []
                if self.enqueuer.refusal(job)
                else [
                    replace(d, decided_at=now)
                    for d in plan_pass(
                        view, source, seen + 1, depth=depth, now=prefetch.epoch(now), recorded=recorded
                    )
                ]
            )
            if new or not view.in_flight:
                if not self.store.decide(job.job_id, seen, new):
                    job = self.store.get_job(job.job_id)
                    if job.terminal or job.cancel_requested_at is not None:
                        return job.status  # the advancer ends a cancelled job
                    continue  # another pass decided first: look again
                seen += 1
                if self.cache is not None:
                    self.cache.decided(job.job_id, seen, [replace(d, seq=seen) for d in new])
                if new:
                    self.metric("SweepDecisions", len(new), "Count")
                    if any(d.backup for d in new):
                        self.metric("BackupTasks", sum(1 for d in new if d.backup), "Count")
                    promoted = sum(1 for d in new if d.rung > 0 and not d.backup)
                    if promoted:
                        self.metric("TrialsPromoted", promoted, "Count")
            if not new and not view.in_flight:
                return self._end(job, view)
            self._send(job, [*decisions, *new], sent, seen, deadline)
            if view.wake_at is not None and self.wake is not None:
                self.wake(job.job_id, view.wake_at)  # a straggler shows then: a backup may be due
            return job.status
        raise AsyncSweepError(
            f"job {job.job_id}: {MAX_PASSES} sweep passes lost their race; retried on redelivery"
        )

    def _read(
        self, job: JobRecord, seen: int
    ) -> tuple[list[SweepDecision], list[ShardResult], dict[tuple[int, int], str]]:
        """The job's decisions (up to pass ``seen`` at least), its recorded results and when each
        was recorded: what changed since the last pass, with a cache, else all of them."""
        if self.cache is not None:
            decisions, results = self.cache.view(job, seen)
            return decisions, results, self.cache.recorded(job.job_id)
        decisions = self.store.sweep_decisions(job.job_id)
        rows = list(self.store.iter_results(job.job_id, task_type=None))
        recorded = {(row.result.round, row.result.shard_id): row.recorded_at for row in rows}
        return decisions, [row.result for row in rows], recorded

    def _send(
        self, job: JobRecord, decisions: list[SweepDecision], sent: int, seen: int, deadline: float | None
    ) -> None:
        """Put every decided task not yet sent on the queue (each in its own lane), then note it."""
        unsent = [d for d in decisions if d.seq > sent]
        if not unsent:
            return
        layout = planning.Layout(self.bucket, job.job_id)
        lanes = job.request.max_parallel
        messages = []
        # A source may give a task more than its draw (Optuna's: the job's log up to the trial's ask).
        task_params = getattr(trial_source(job.request), "task_params", None)
        drawn = {d.trial: d.params for d in decisions if d.rung == 0}
        # Promotions first: a queue serves the older messages first, and a promotion is what a
        # sweep's first fully trained configuration waits for.
        for d in sorted(unsent, key=lambda d: (d.seq, -d.rung, d.trial)):
            params = d.params if task_params is None else task_params(d.trial, drawn)
            task = planning.train_task(
                job.request, job.job_id, layout, d.rung, d.trial, d.init_model, params=params, backup=d.backup
            )
            # A retried task carries its generation (fresh checkpoints, a fresh deduplication id).
            task = replace(task, generation=d.generation)
            message = self.enqueuer.message(task, lanes, d.generation)
            messages.append(replace(message, group_id=lane_group(job.job_id, d.lane)))
        self.enqueuer.fanout.send(messages, deadline=deadline)
        self.store.sweep_sent(job.job_id, seen)
        self.metric("TasksEnqueued", len(messages), "Count")

    def retry(self, job: JobRecord) -> list[tuple[int, int]]:
        """Decide the failed tasks again (``shardq retry``); returns their ``(rung, trial)``.

        Steps, each safe to repeat (a crash anywhere is repaired by running the retry again):

        1. a fresh retry generation; each failed outcome (any rung) is deleted and un-counted with
           its retry mark of that generation (``JobStore.forget_trial_failures``); a FAILED job's
           decided tasks that never got a counted outcome (dropped or late once it failed) are
           marked too;
        2. every decision whose retry mark is newer than its own generation is decided again
           under that generation (``JobStore.decide(again=...)``): the next pass sends it.

        The caller reopens a FAILED job, then advances it, which sends them. Raises
        ``AsyncSweepError`` when there is nothing to retry.
        """
        store, job_id = self.store, job.job_id
        decisions = store.sweep_decisions(job_id)
        failed = [
            row.result
            for row in store.failed_results(job_id, task_type=None)
            if row.result.task_type == "train"
        ]
        generation = store.next_retry_generation(job_id, job.status)
        by: dict[int, list[ShardResult]] = {}
        for r in failed:
            by.setdefault(r.round, []).append(r)
        for rung, rows in sorted(by.items()):
            for i in range(0, len(rows), MAX_RETRY_CHUNK):
                chunk = rows[i : i + MAX_RETRY_CHUNK]
                # The forgotten failures' cost stays the job's (the time was spent): say how much.
                spent = sum(r.cost_micro_usd for r in chunk)
                trials = [r.shard_id for r in chunk]
                store.forget_trial_failures(job_id, job.status, rung, trials, generation, spent)
        if job.status == "FAILED":
            counted = {
                (r.result.round, r.result.shard_id) for r in store.iter_results(job_id, task_type=None)
            }
            unrun: dict[int, list[int]] = {}
            for d in decisions:
                if d.key not in counted and not d.backup:
                    unrun.setdefault(d.rung, []).append(d.trial)
            for rung, trials in sorted(unrun.items()):
                store.mark_retried(job_id, rung, "train", trials, generation)
        again: list[SweepDecision] = []
        for rung in sorted({d.rung for d in decisions}):
            marks = store.retried_generations(job_id, rung, "train")
            again.extend(  # the task alone: a retry sends no backup copy
                replace(d, generation=marks[d.trial])
                for d in decisions
                if d.rung == rung and not d.backup and marks.get(d.trial, 0) > d.generation
            )
        if not again:
            raise AsyncSweepError(f"job {job_id} has no failed or unfinished trials to retry")
        for i in range(0, len(again), MAX_DECISIONS):
            for _ in range(MAX_PASSES):
                seen, _sent = store.sweep_cursor(job_id)
                if store.decide(job_id, seen, again[i : i + MAX_DECISIONS], again=job.status):
                    break
            else:
                raise AsyncSweepError(f"job {job_id}: the retry lost every race; run it again")
        return sorted(d.key for d in again)

    def summarize_rungs(self, job: JobRecord, results: Sequence[ShardResult] | None = None) -> None:
        """Write each rung's round summary (what ``result``, ``watch`` and the dashboard read as
        the sweep's rung history) from its recorded outcomes (``results``, else read): at the
        sweep's end, and when it ends early (a cancel, the failure budget, a spent budget:
        ``Advancer.advance``), so every view shows the rungs that ran."""
        if results is None:
            results = [row.result for row in self.store.iter_results(job.job_id, task_type=None)]
        rungs = by_rung(results)
        for rung in sorted(rungs):
            self.store.put_round_summary(
                job.job_id, rung, summarize_round(rung, rungs[rung], job.round_started_at)
            )

    def _end(self, job: JobRecord, view: Pass) -> str:
        """Nothing in flight, nothing to run: summarize each rung and finish the job."""
        self.summarize_rungs(job, view.results)
        rungs = by_rung(view.results)
        if job.budget_stop is not None:  # stopped by its spend budget: FAILED, saying what it spent
            return self.finisher.finalize(job, "FAILED", spend.stopped_message(job))
        if any(ranked(results, job.request) for results in rungs.values()):
            return self.finisher.finalize(job, "SUCCEEDED")
        assert job.request.objective is not None
        metric = job.request.objective.metric
        return self.finisher.finalize(
            job,
            "FAILED",
            f"every trial diverged or failed: none has a finite {metric}; narrow the search space "
            "(e.g. lower learning rates) or fix the failures (shardq result --json lists them), "
            "and submit again",
        )


def lane_group(job_id: str, lane: int) -> str:
    """``MessageGroupId`` of an asynchronous sweep's task: its lane, held while it is in flight."""
    return f"{job_id}:async:{lane}"


def takers(store: JobStore, job_id: str, rung: int) -> frozenset[int]:
    """The trials decided at ``rung`` (a result of any other trial there is foreign)."""
    return frozenset(d.trial for d in store.sweep_decisions(job_id, rung))


__all__ = [
    "AsyncProgress",
    "AsyncSweep",
    "AsyncSweepError",
    "EnumeratedSource",
    "Promotion",
    "SweepRecords",
    "TrialSource",
    "async_progress",
    "is_async",
    "lane_group",
    "max_tasks",
    "next_promotion",
    "plan_pass",
    "ranked",
    "register_trial_source",
    "rung_bounds",
    "takers",
    "trial_source",
]
