"""Backup tasks (``shardq.core.async_backup``): a slow worker's running task copied onto a free fast
worker when nothing else can run, the first copy's outcome counted once.

The pure rules on constructed records (as ``test_asha_prefetch`` builds them), then the real engine
on the local cloud on a controlled clock: the copy's message survives the FIFO queue's
deduplication, both copies' outcomes count once, the promotion is decided once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from shardq.core import async_backup, async_prefetch, async_sweep, checkpoint_keys, planning, spend
from shardq.core.contracts import ShardResult, ShardTask, TrainingRequest
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome, SweepDecision
from shardq.core.planning import dedup_id
from shardq.core.spend import BUDGET_DROP
from shardq.core.validation import ValidationError
from shardq.worker.drops import drop_reason
from tests.chaos.model_invariants import cost_problems
from tests.chaos.model_world import scan_items
from tests.core.test_asha import asha_sweep, loss_of, take
from tests.core.test_asha_prefetch import at, decision, outcome
from tests.helpers import Clock, result_for

TLOG = logging.LoggerAdapter(logging.getLogger("test"), {})
REQUEST = TrainingRequest.from_dict(asha_sweep("p", trials=5, max_parallel=2))


def straggler_scene() -> tuple[list[SweepDecision], list[ShardResult], dict[tuple[int, int], str]]:
    """4 lanes, workers "a", "b" (0.5 s tasks) and "slow" (5 s: pace 10). Trials 0-2 ran at rung 0
    (trial 2 on the slow worker, in lane 3, recorded at 9.7 s), trial 0 went on to rung 1 and
    reported; lane 3 runs trial 3 since 9.8 s, on the slow worker (its lane's last worker)."""
    decisions = [
        decision(0, 0, 0),
        decision(0, 1, 1),
        decision(0, 2, 3),
        decision(1, 0, 0, decided=5.0, rule="asha"),
        decision(0, 3, 3, decided=9.8),
    ]
    results = [
        replace(outcome(0, 0, 1.0), worker_id="a"),
        replace(outcome(0, 1, 3.0), worker_id="b"),
        replace(outcome(0, 2, 2.0, duration=5.0), worker_id="slow"),
        replace(outcome(1, 0, 0.5, duration=1.5), worker_id="a"),
    ]
    recorded = {(0, 0): at(0.6), (0, 1): at(0.7), (0, 2): at(9.7), (1, 0): at(6.6)}
    return decisions, results, recorded


def plan(
    trials: int,
    decisions: list[SweepDecision],
    results: list[ShardResult],
    recorded: dict[Any, str],
    now: float,
) -> list[tuple[int, int, int, int]]:
    """A pass's new decisions, as ``(rung, trial, lane, backup)``, on a 4-lane ASHA sweep of ``trials``."""
    request = TrainingRequest.from_dict(asha_sweep("p", trials=trials, max_parallel=4))
    view = async_sweep.Pass(request, decisions, results)
    new = async_sweep.plan_pass(
        view, async_sweep.trial_source(request), 7, now=async_prefetch.epoch(at(now)), recorded=recorded
    )
    return [(d.rung, d.trial, d.lane, d.backup) for d in new]


def test_a_slow_workers_task_is_backed_up_when_a_free_slot_has_nothing_else() -> None:
    # GIVEN every trial drawn, no promotion due (rung 0's best went on; rung 1 has one result), and
    # trial 3 0.2 s into its rung 0 on the slow worker (about 5 s to go; a copy takes 0.5 s)
    decisions, results, recorded = straggler_scene()
    slots = async_prefetch.lane_slots(
        decisions, results, 4, 0, async_prefetch.epoch(at(10.0)), recorded=recorded
    )
    assert [(s.lane, s.task.key) for s in slots.suspects] == [(3, (0, 3))]
    assert round(slots.suspects[0].left_s, 3) == 4.8 and slots.suspects[0].copy_s < 1.0
    # WHEN a pass runs
    new = plan(4, decisions, results, recorded, now=10.0)
    # THEN it decides one backup copy of trial 3's rung 0, in the best free lane, never lane 3
    assert new == [(0, 3, 0, 1)]


def test_no_backup_while_a_promotion_or_a_new_trial_can_run() -> None:
    decisions, results, recorded = straggler_scene()
    # GIVEN twenty trials left to draw, more than the two fast workers start before the slow
    # worker's trial 3 ends (20 × 0.5 s, shared by two, against its 4.8 s left): the free slots (two
    # free workers and a spare lane) take new trials, and no backup is decided
    # (``test_a_backup_that_still_gains_after_the_last_trials_goes_before_them`` for fewer)
    assert plan(24, decisions, results, recorded, now=10.0) == [(0, 4, 0, 0), (0, 5, 1, 0), (0, 6, 2, 0)]
    # GIVEN a promotion due instead (rung 1 reaches three results, trial 0's the best)
    more = [
        *decisions,
        decision(1, 1, 1, decided=6.0, rule="asha"),
        decision(1, 2, 2, decided=6.0, rule="asha"),
    ]
    done = [
        *results,
        replace(outcome(1, 1, 2.0, duration=1.5), worker_id="b"),
        replace(outcome(1, 2, 3.0, duration=1.5), worker_id="a"),
    ]
    stamps = {**recorded, (1, 1): at(7.6), (1, 2): at(7.7)}
    # THEN the promotion takes the first slot; the backup only a slot left over
    assert plan(4, more, done, stamps, now=10.0) == [(2, 0, 0, 0), (0, 3, 1, 1)]


def test_a_backup_that_still_gains_after_the_last_trials_goes_before_them() -> None:
    decisions, results, recorded = straggler_scene()
    # GIVEN two trials left to draw, fewer than the two fast workers start before the slow worker's
    # trial 3 ends: a copy started after them would still end first
    slots = async_prefetch.lane_slots(
        decisions, results, 4, 0, async_prefetch.epoch(at(10.0)), recorded=recorded
    )
    assert slots.fast_workers == 2 and slots.idle_slow == 0
    assert async_backup.due_now(slots.suspects, 2, 0.5, 2) == slots.suspects
    assert async_backup.due_now(slots.suspects, 20, 0.5, 2) == []
    # THEN it goes first, in the best free lane a fast worker takes now, and the trials after it
    assert plan(6, decisions, results, recorded, now=10.0) == [(0, 3, 0, 1), (0, 4, 1, 0), (0, 5, 2, 0)]
    assert plan(5, decisions, results, recorded, now=10.0) == [(0, 3, 0, 1), (0, 4, 1, 0)]
    # AND with both fast workers' lanes busy, it takes the spare lane a new trial would (it waits
    # there for the first fast worker to free)
    busy = [*decisions, decision(0, 4, 0, decided=9.9), decision(0, 5, 1, decided=9.9)]
    assert plan(8, busy, results, recorded, now=10.0) == [(0, 3, 2, 1)]
    assert plan(30, busy, results, recorded, now=10.0) == [(0, 6, 2, 0)]
    # AND a task only presumed on the slow worker (it freed at 9.7 s, trial 3 became available in
    # lane 1 at 9.75 s, and has run past a fast worker's time) is not copied before new trials: a
    # mistaken copy mid-sweep would hold its lane as a losing copy for a slow task's time (dev run,
    # BENCHMARKS.md §19); it is copied once nothing else can run
    # (``test_a_task_an_idle_slow_worker_may_have_taken_is_copied_only_once_past_a_fast_workers_time``)
    idle = [*decisions[:4], decision(0, 3, 1, decided=9.75)]
    late = async_prefetch.lane_slots(idle, results, 4, 0, async_prefetch.epoch(at(10.5)), recorded=recorded)
    assert late.idle_slow == 1 and [s.task.key for s in late.suspects] == [(0, 3)]
    assert plan(6, idle, results, recorded, now=10.5) == [(0, 4, 0, 0), (0, 5, 2, 0)]


def test_a_task_is_backed_up_once_and_a_fast_workers_task_never() -> None:
    decisions, results, recorded = straggler_scene()
    # GIVEN trial 3's backup already decided (lane 0): no second one, whatever slots are free
    backed = [*decisions, replace(decision(0, 3, 0, decided=10.0), backup=1)]
    assert plan(4, backed, results, recorded, now=10.5) == []
    # GIVEN trial 3 on lane 1 since 9.0 s, last freed by fast worker "b" (not straggling), and the
    # slow worker polling only since 9.9 s (it cannot have taken trial 3): nothing is copied
    fast = [*decisions[:4], decision(0, 3, 1, decided=9.0)]
    stamps = {**recorded, (0, 2): at(9.9)}
    assert plan(4, fast, results, stamps, now=10.0) == []
    # AND a suspect that would end sooner than its copy (the slow worker nearly done) is left alone
    suspect = async_backup.Suspect(3, decisions[-1], left_s=0.3, copy_s=0.6)
    assert async_backup.choose([suspect], decisions, [0, 1], 7) == []


def test_a_task_an_idle_slow_worker_may_have_taken_is_copied_only_once_past_a_fast_workers_time() -> None:
    # GIVEN the slow worker freed at 9.7 s (lane 3) and presumed idle, and trial 3 available in
    # lane 1 from 9.75 s (it may have taken it, or a fast worker did), nothing else to run
    decisions, results, recorded = straggler_scene()
    scene = [*decisions[:4], decision(0, 3, 1, decided=9.75)]

    def suspects(now: float) -> list[tuple[int, int]]:
        slots = async_prefetch.lane_slots(
            scene, results, 4, 0, async_prefetch.epoch(at(now)), recorded=recorded
        )
        return [s.task.key for s in slots.suspects]

    # THEN while it could still be running on a fast worker (0.5 s at pace 1, plus the round
    # trip) it is no suspect, and a pass copies nothing (a copy of a fast worker's task would be a
    # duplicate for nothing), but asks to run again when that time is past
    assert suspects(10.1) == []
    assert plan(4, scene, results, recorded, now=10.1) == []
    request = TrainingRequest.from_dict(asha_sweep("p", trials=4, max_parallel=4))
    view = async_sweep.Pass(request, scene, results)
    now = async_prefetch.epoch(at(10.1))
    async_sweep.plan_pass(view, async_sweep.trial_source(request), 7, now=now, recorded=recorded)
    assert view.wake_at is not None and view.wake_at - now < 0.5
    # AND once it has run past that, it is presumed on the slow worker and copied
    assert suspects(10.5) == [(0, 3)]
    assert plan(4, scene, results, recorded, now=10.5) == [(0, 3, 0, 1)]


def test_a_pass_that_leaves_slots_free_asks_to_run_again_when_a_task_would_turn_straggling() -> None:
    # GIVEN trial 3 on lane 1 since 9.0 s, not straggling yet (its lane last freed by a fast
    # worker), a slow worker measured, nothing else to run: the pass decides nothing
    decisions, results, recorded = straggler_scene()
    quiet = [*decisions[:4], decision(0, 3, 1, decided=9.0)]
    stamps = {**recorded, (0, 2): at(9.9)}
    request = TrainingRequest.from_dict(asha_sweep("p", trials=4, max_parallel=4))
    view = async_sweep.Pass(request, quiet, results)
    now = async_prefetch.epoch(at(10.0))
    assert async_sweep.plan_pass(view, async_sweep.trial_source(request), 7, now=now, recorded=stamps) == []
    # THEN it names when trial 3 turns straggling (twice its rung's 0.5 s, plus the 0.1 s round
    # trip, after 9.0 s): no result may come before, so the driver arms a tick for then
    assert view.wake_at is not None and round(view.wake_at - now, 3) == 0.1
    # AND on an even fleet (no worker measured slow) it asks nothing
    even = [replace(r, duration_s=0.5) for r in results]
    view = async_sweep.Pass(request, quiet, even)
    async_sweep.plan_pass(view, async_sweep.trial_source(request), 7, now=now, recorded=stamps)
    assert view.wake_at is None


def test_a_task_queued_behind_a_slow_workers_task_is_backed_up_too() -> None:
    # GIVEN trial 4 queued in lane 3 behind the slow worker's trial 3 (a FIFO group hands it out
    # only after trial 3), every trial drawn
    decisions, results, recorded = straggler_scene()
    queued = [*decisions, decision(0, 4, 3, decided=9.9)]
    # THEN both are copied, the one that would end last first (trial 4: after trial 3's 4.8 s)
    assert plan(5, queued, results, recorded, now=10.0) == [(0, 4, 0, 1), (0, 3, 1, 1)]
    # AND once trial 3's backup won, trial 4, still queued behind the losing copy, gets its own
    backed = [*queued, replace(decision(0, 3, 0, decided=10.0), backup=1)]
    won = [*results, replace(outcome(0, 3, 4.0), worker_id="a", backup=1)]
    stamps = {**recorded, (0, 3): at(10.6)}
    assert plan(5, backed, won, stamps, now=10.7) == [(0, 4, 0, 1)]


def test_the_copy_number_travels_in_task_and_result_bodies_and_is_validated() -> None:
    task = planning.train_task(REQUEST, "p", planning.Layout("b", "p"), 1, 4, "s3://b/m", backup=1)
    # GIVEN a backup copy: its body says so, its result too, and a retry's generation stays apart
    assert ShardTask.from_json(task.to_json()).backup == 1
    assert ShardResult.from_json(ShardResult.for_task(task, "succeeded").to_json()).backup == 1
    assert dedup_id(replace(task, generation=2), 2) == f"{task.key}:g2:b1"
    # (its checkpoints beside the task's, not under them: neither copy prunes the other's)
    assert (
        checkpoint_keys.task_prefix("p", 1, "train", 4, 0, task.backup) == "checkpoints/p/r1/train/s4/g0-b1/"
    )
    assert checkpoint_keys.task_prefix("p", 1, "train", 4, 0) == "checkpoints/p/r1/train/s4/g0/"
    # THEN the task's own copy keeps the bodies it had (the field left out at 0)
    plain = replace(task, backup=0)
    assert "backup" not in plain.to_json() and "backup" not in ShardResult.for_task(plain, "failed").to_json()
    # AND a copy number other than 0 or 1 is refused, naming the field
    with pytest.raises(ValidationError, match="backup must be between 0 and 1"):
        ShardTask.from_json({**task.to_dict(), "backup": 2})


def test_the_losing_copys_lane_stays_busy_until_its_copy_is_presumed_ended() -> None:
    # GIVEN trial 3's backup (lane 0, decided at 10.0 s) reported first, at 10.6 s, from worker "a"
    decisions, results, recorded = straggler_scene()
    backed = [*decisions, replace(decision(0, 3, 0, decided=10.0), backup=1)]
    won = [*results, replace(outcome(0, 3, 4.0), worker_id="a", backup=1)]
    stamps = {**recorded, (0, 3): at(10.6)}
    assert async_backup.losing_copies(backed, won) == [decisions[-1]]

    def slots(now: float) -> async_prefetch.Slots:
        return async_prefetch.lane_slots(backed, won, 4, 0, async_prefetch.epoch(at(now)), recorded=stamps)

    # THEN lane 3, where the slow worker still runs the other copy, is busy and straggling: no task
    # decided now would wait behind it (a FIFO group hands out nothing while its message is out)
    early = slots(11.0)
    assert 3 not in early.free and 3 in early.slow and early.suspects == []
    # AND once that copy is presumed ended (the slowest pace × the rung's typical time after its
    # decision at 9.8 s) the lane is free again
    assert 3 in slots(16.0).free
    # AND the round trip is not measured from a backed-up task (which copy answered is unknown)
    before = async_prefetch.overheads(decisions, results, recorded)
    assert len(async_prefetch.overheads(backed, won, stamps)) == len(before)


def walk_to_a_copy(
    engine: Engine, clients: dict[str, Any], finish: Callable[[ShardTask, str, float, float], None]
) -> tuple[ShardTask, ShardTask]:
    """A 5-trial, 2-lane ASHA sweep just submitted, walked to its backup copy: fast workers report
    trials 0, 2, 3 (0.5 s each) and trial 0's promotion; the slow worker reports trial 1 after 5 s,
    then takes trial 4 (drawn into its lane: the last trial), which the pass after the promotion's
    result backs up. ``finish(task, worker, seconds, wait)`` reports a task after ``wait`` seconds
    of the engine's clock. Returns trial 4's original (running on the slow worker) and its copy."""
    t0, t1 = take(engine, clients)
    finish(t0, "fast", 0.5, 0.6)
    (t2,) = take(engine, clients)
    finish(t2, "fast", 0.5, 0.6)
    (t3,) = take(engine, clients)
    finish(t3, "fast", 0.5, 0.6)
    (p0,) = take(engine, clients)
    assert (p0.round, p0.shard_id) == (1, 0)
    finish(t1, "slow", 5.0, 3.5)
    (t4,) = take(engine, clients)
    assert (t4.round, t4.shard_id, t4.backup) == (0, 4, 0)
    finish(p0, "fast", 1.5, 0.6)
    (copy,) = take(engine, clients)
    assert (copy.round, copy.shard_id, copy.backup) == (0, 4, 1)
    return t4, copy


def test_the_backup_copy_has_its_own_dedup_id_output_and_checkpoints_and_is_dropped_once_answered(
    make_engine: Callable[..., Engine], clients: dict[str, Any], clock: Clock
) -> None:
    # GIVEN a 5-trial ASHA sweep on 2 lanes (on the engine's controlled clock): fast workers report
    # trials 0, 2, 3 (0.5 s each) and trial 0's promotion; the slow worker reports trial 1 after
    # 5 s, then takes trial 4 (drawn into its lane: the last trial)
    engine = make_engine(clock=clock)
    engine.submit(asha_sweep("bk", trials=5, max_parallel=2))

    def finish(task: ShardTask, worker: str, seconds: float, wait: float) -> None:
        clock.advance(wait)
        result = replace(result_for(task, loss=loss_of(task)), duration_s=seconds, worker_id=worker)
        assert engine.ingest([Outcome(replace(result, backup=task.backup))]) == []

    # WHEN trial 0's promotion reports (fast): nothing is left to draw or promote
    # THEN the pass backs up trial 4: its message arrives (not dropped as the first send's
    # duplicate: its own deduplication id), the same trial, params and model, its own outputs
    t4, copy = walk_to_a_copy(engine, clients, finish)
    assert copy.hyperparameters == t4.hyperparameters and copy.init_model_uri == t4.init_model_uri
    assert dedup_id(copy) == f"{t4.key}:b1" and dedup_id(t4) == t4.key
    assert copy.output_prefix != t4.output_prefix and copy.output_prefix.rstrip("/").endswith("-b1")
    decisions = engine.store.sweep_decisions("bk")
    assert [(d.key, d.backup) for d in decisions if d.key == (0, 4)] == [((0, 4), 0), ((0, 4), 1)]
    # WHEN the copy reports first, then the slow worker's own copy
    finish(copy, "fast", 0.5, 0.6)
    dup = replace(result_for(t4, loss=loss_of(t4)), duration_s=5.0, worker_id="slow")
    recorded = engine.advancer.record([Outcome(dup)])
    # THEN the second outcome is a duplicate, counted once, the first copy's kept
    assert [o.result.worker_id for o in recorded.duplicates] == ["slow"] and not recorded.recorded
    rung0 = engine.store.results("bk", 0)
    assert [(r.result.shard_id, r.result.backup) for r in rung0 if r.result.shard_id == 4] == [(4, 1)]
    job = engine.store.get_job("bk")
    assert job.done(0, "train") == 5 and job.enqueued(0, "train") == 5
    # AND a backup copy received once its task is answered is dropped unrun by the worker
    assert drop_reason(engine.store, copy, TLOG) is not None
    assert drop_reason(engine.store, replace(copy, shard_id=3, round=1), TLOG) is None
    # AND the sweep ends with every decision once: no second promotion of any trial
    engine.advancer.advance("bk")
    while running := take(engine, clients):
        for task in running:
            finish(task, "fast", 1.0, 0.6)
    final = engine.store.sweep_decisions("bk")
    assert len({d.ident for d in final}) == len(final)
    assert sum(1 for d in final if d.backup) == 1
    assert engine.store.get_job("bk").status == "SUCCEEDED"


def test_once_the_budget_is_spent_a_backup_copy_is_dropped_without_a_count(
    engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN a running ASHA sweep whose budget is spent, and a task of it and its backup copy
    engine.submit(asha_sweep("bkb", trials=4, max_parallel=2))
    task = take(engine, clients)[0]
    assert engine.store.mark_budget_stop("bkb", 1, 0) is True
    # THEN the worker drops the task with a count (spend.Dropped: the guard ends the job once every
    # task out is answered) and the copy without one: it is no task of its own, and a counted drop
    # would take its task for answered while the original still runs
    assert drop_reason(engine.store, task, TLOG) == BUDGET_DROP
    copy = replace(task, backup=1)
    assert drop_reason(engine.store, copy, TLOG) == "the budget is spent (a backup copy: nothing to count)"


def test_a_losing_backup_copys_cost_counts_once_in_the_job_and_its_spend_guard(
    engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN an ASHA sweep with a 0.05 USD budget on workers priced at 36 USD an hour (10,000
    # micro-USD a second), and its first task
    engine.submit({**asha_sweep("bkc", trials=4, max_parallel=2), "budget_usd": 0.05})
    task = take(engine, clients)[0]

    def run(backup: int, seconds: float, worker: str) -> Outcome:
        result = replace(result_for(task, loss=loss_of(task)), duration_s=seconds, worker_id=worker)
        return Outcome(replace(result, price_per_hour=36.0, backup=backup))

    def cost() -> int:
        return engine.store.get_job("bkc").cost_micro_usd

    # WHEN its backup copy reports first (0.5 s on a fast worker) and is counted
    assert engine.advancer.record([run(1, 0.5, "fast")]).recorded
    assert cost() == 5_000
    # AND the original's outcome (5 s on the slow worker) arrives as its duplicate
    recorded = engine.advancer.record([run(0, 5.0, "slow")])
    # THEN it is not counted as an outcome, but its run's cost reaches the job
    assert len(recorded.duplicates) == 1 and not recorded.recorded
    assert cost() == 55_000 and engine.store.get_job("bkc").done(0, "train") == 1
    # AND once per copy: the same duplicate redelivered adds nothing, nor does a redelivery of the
    # counted copy's own outcome (its cost is in already)
    engine.advancer.record([run(0, 5.0, "slow")])
    engine.advancer.record([run(1, 0.5, "fast")])
    assert cost() == 55_000
    # AND the model test's cost invariant (counted outcomes + COPY# items) holds on the table
    items = [i for i in scan_items(clients["dynamodb"], engine.store.table) if i["pk"]["S"] == "JOB#bkc"]
    raw = next(i for i in items if i["sk"]["S"] == "JOB")
    assert cost_problems(engine.store.get_job("bkc"), items, raw) == []
    # AND the spend guard sees it: 0.055 USD spent of 0.05, the budget stop is marked
    job = spend.stop_if_spent(engine.store, engine.store.get_job("bkc"))
    assert job.budget_stop is not None and job.budget_stop["cost_uusd"] == 55_000
