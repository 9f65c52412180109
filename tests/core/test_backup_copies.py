"""Backup copies' costs and outcomes (``shardq.core.store.copies``, ``shardq.core.async_backup``):
every priced run of a sweep counted once in its job's cost, also when it reports after the job
ended or meets a write conflict, and per trial; a copy's success in place of the other copy's
counted failure; and the prefetch's presumed-gone straggler (``async_prefetch.became_available``).

On the local cloud, the real engine on a controlled clock; the one fault injected is a
``TransactionConflict``, the way ``tests/chaos/test_pipeline.py`` injects DynamoDB faults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from shardq.core import async_prefetch, search
from shardq.core.batchcalls import JobStoreError
from shardq.core.contracts import ShardTask
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from tests.chaos.model_invariants import cost_problems
from tests.chaos.model_world import scan_items
from tests.core.test_asha import asha_sweep, load_manifest, loss_of, take
from tests.core.test_asha_backup import walk_to_a_copy
from tests.core.test_asha_prefetch import at, decision, outcome, slow_worker_scene
from tests.helpers import Clock, result_for

PRICE = 36.0  # USD an hour: 10,000 micro-USD a second


def run(task: ShardTask, backup: int, seconds: float, worker: str, **fields: Any) -> Outcome:
    """``task``'s copy ``backup`` reporting ``seconds`` of work on ``worker`` at ``PRICE``."""
    result = replace(result_for(task, loss=loss_of(task)), duration_s=seconds, worker_id=worker)
    return Outcome(replace(result, price_per_hour=PRICE, backup=backup, **fields))


def job_items(engine: Engine, clients: dict[str, Any], job_id: str) -> list[dict[str, Any]]:
    return [i for i in scan_items(clients["dynamodb"], engine.store.table) if i["pk"]["S"] == f"JOB#{job_id}"]


def assert_cost_invariant(engine: Engine, clients: dict[str, Any], job_id: str) -> None:
    """The model test's invariant 10: the job's cost is its outcome items' plus its COPY# items'."""
    items = job_items(engine, clients, job_id)
    raw = next(i for i in items if i["sk"]["S"] == "JOB")
    assert cost_problems(engine.store.get_job(job_id), items, raw) == []


def trials_cost(engine: Engine, job_id: str) -> int:
    """The leaderboard's trial costs summed (micro-USD), as the dashboard and ``result`` show them."""
    job = engine.store.get_job(job_id)
    results = [row.result for row in engine.store.iter_results(job_id, task_type=None)]
    section = search.sweep_section(job.request, results, engine.store.copy_costs(job_id))
    return round(sum(row.get("cost_usd", 0.0) for row in section["leaderboard"]) * 1_000_000)


def test_a_losing_copy_that_reports_after_the_sweep_ended_still_counts_once(
    make_engine: Callable[..., Engine], clients: dict[str, Any], clock: Clock
) -> None:
    # GIVEN a 5-trial ASHA sweep, 2 lanes, on a fast worker (0.5 s tasks) and a slow one (5 s),
    # priced at 36 USD an hour; the slow worker's last task gets a backup copy on the fast one
    engine = make_engine(clock=clock)
    engine.submit(asha_sweep("late", trials=5, max_parallel=2))

    def finish(task: ShardTask, worker: str, seconds: float, wait: float) -> None:
        clock.advance(wait)
        assert engine.ingest([run(task, task.backup, seconds, worker)]) == []

    t4, copy = walk_to_a_copy(engine, clients, finish)
    # WHEN the copy wins and the sweep runs to its end while the original still runs
    finish(copy, "fast", 0.5, 0.6)
    while running := take(engine, clients):
        for task in running:
            finish(task, "fast", 1.0, 0.6)
    job = engine.store.get_job("late")
    assert job.status == "SUCCEEDED", job.error
    ended = job.cost_micro_usd
    # (the manifest's trials add up to the job's cost when it ended)
    board = load_manifest(clients, job.result_uri)["leaderboard"]
    assert round(sum(row.get("cost_usd", 0.0) for row in board) * 1_000_000) == ended
    # AND the slow worker's original (5 s: 50,000 micro-USD) reports after the end
    clock.advance(3.0)
    assert engine.ingest([run(t4, 0, 5.0, "slow")]) == []
    # THEN its cost counts, once (a redelivery adds nothing)
    assert engine.store.get_job("late").cost_micro_usd == ended + 50_000
    assert engine.ingest([run(t4, 0, 5.0, "slow")]) == []
    job = engine.store.get_job("late")
    assert job.cost_micro_usd == ended + 50_000 and job.status == "SUCCEEDED"
    # AND the cost invariant holds, and the trials' costs (trial 4's both runs) add up to the job's
    assert_cost_invariant(engine, clients, "late")
    assert trials_cost(engine, "late") == job.cost_micro_usd


class ConflictOnce:
    """The DynamoDB client with one ``TransactWriteItems`` writing a ``COPY#`` item cancelled by a
    ``TransactionConflict`` (another writer on the job item), as ``FlakyDynamoDB`` injects faults."""

    def __init__(self, real: Any) -> None:
        self.real, self.left = real, 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def transact_write_items(self, **kwargs: Any) -> Any:
        items = kwargs["TransactItems"]
        if self.left and any("COPY#" in str(i.get("Put", {}).get("Item", {}).get("sk", "")) for i in items):
            self.left -= 1
            reasons = [{"Code": "None"}] * (len(items) - 1) + [{"Code": "TransactionConflict"}]
            raise self.real.exceptions.TransactionCanceledException(
                {
                    "Error": {"Code": "TransactionCanceledException", "Message": "injected"},
                    "CancellationReasons": reasons,
                },
                "TransactWriteItems",
            )
        return self.real.transact_write_items(**kwargs)


def test_the_manifests_trial_costs_add_up_to_its_cost_when_a_copy_reports_during_the_end(
    engine: Engine, clients: dict[str, Any], monkeypatch: Any
) -> None:
    # GIVEN a sweep whose first task's backup copy won, and which is cancelled
    engine.submit(asha_sweep("mf", trials=4, max_parallel=2))
    task = take(engine, clients)[0]
    assert engine.advancer.record([run(task, 1, 0.5, "fast")]).recorded
    assert engine.store.request_cancel("mf")
    real = engine.store.copy_costs

    def copy_costs(job_id: str, **kw: Any) -> dict[int, int]:
        # WHEN the slow original reports between the job's freeze and the manifest's read of the
        # copies (found in review: the leaderboard then held a cost the manifest's total did not)
        engine.advancer.record([run(task, 0, 5.0, "slow")])
        return real(job_id, **kw)

    monkeypatch.setattr(engine.store, "copy_costs", copy_costs)
    engine.advance("mf")
    monkeypatch.setattr(engine.store, "copy_costs", real)
    # THEN the manifest's trial costs add up to its cost: the job's when it froze
    job = engine.store.get_job("mf")
    manifest = load_manifest(clients, job.result_uri)
    board = manifest["leaderboard"]
    assert (
        round(sum(r.get("cost_usd", 0.0) for r in board) * 1e6)
        == round(manifest["cost"]["cost_usd"] * 1e6)
        == 5_000
    )
    # AND the late run still counts, once, in the job's cost and its live trial costs
    assert job.cost_micro_usd == 55_000 and trials_cost(engine, "mf") == 55_000
    assert_cost_invariant(engine, clients, "mf")


def test_a_success_whose_counted_failure_a_retry_forgot_meanwhile_is_redelivered_not_dropped(
    engine: Engine, clients: dict[str, Any], monkeypatch: Any
) -> None:
    # GIVEN a sweep whose first task's backup copy failed (counted)
    engine.submit(asha_sweep("fg", trials=4, max_parallel=2, max_failed_shards=3))
    task = take(engine, clients)[0]
    assert engine.advancer.record(
        [run(task, 1, 0.5, "fast", status="failed", error="oom", metrics={})]
    ).recorded
    real = engine.store.replace_failed_copy

    def forget_first(outcome: Outcome, tenant: str | None = None) -> bool:
        # WHEN ``shardq retry`` of the running sweep forgets that failure between the original's
        # success being recorded as a duplicate and its replacement (found in review: its run's
        # cost was then dropped with its message)
        engine.store.forget_trial_failures("fg", "RUNNING", 0, [task.shard_id], 1, 5_000)
        return real(outcome, tenant)

    monkeypatch.setattr(engine.store, "replace_failed_copy", forget_first)
    ok = run(task, 0, 5.0, "slow")
    with pytest.raises(JobStoreError):
        engine.advancer.record([ok])  # THEN the message is redelivered, not deleted
    monkeypatch.setattr(engine.store, "replace_failed_copy", real)
    # AND redelivered, the success is the trial's outcome, its run's cost counted once
    assert engine.advancer.record([ok]).recorded == [ok]
    job = engine.store.get_job("fg")
    assert job.ok(0, "train") == 1 and job.failed_total == 0
    assert job.cost_micro_usd == 5_000 + 50_000


def test_a_write_conflict_on_the_copys_cost_is_retried_not_dropped(
    engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN an ASHA sweep whose first task's backup copy reported first (0.5 s, counted)
    engine.submit({**asha_sweep("conf", trials=4, max_parallel=2), "budget_usd": 5.0})
    task = take(engine, clients)[0]
    assert engine.advancer.record([run(task, 1, 0.5, "fast")]).recorded
    assert engine.store.get_job("conf").cost_micro_usd == 5_000
    # WHEN the original's duplicate (5 s) comes and its cost's transaction meets a conflict
    real = engine.store.ddb
    engine.store.ddb = flaky = ConflictOnce(real)
    try:
        recorded = engine.advancer.record([run(task, 0, 5.0, "slow")])
    finally:
        engine.store.ddb = real
    # THEN the conflict was met, and retried: the cost counts (the message is deleted after this)
    assert flaky.left == 0 and len(recorded.duplicates) == 1
    assert engine.store.get_job("conf").cost_micro_usd == 55_000
    assert_cost_invariant(engine, clients, "conf")


def test_a_copys_success_replaces_the_other_copys_counted_failure_once(
    engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN an ASHA sweep whose first task's backup copy failed first (out of memory on the fast
    # worker's smaller GPU): counted, a failure of the trial
    engine.submit(asha_sweep("fo", trials=4, max_parallel=2, max_failed_shards=2))
    task = take(engine, clients)[0]
    failed = run(task, 1, 0.5, "fast", status="failed", error="CUDA out of memory", metrics={})
    assert engine.advancer.record([failed]).recorded
    job = engine.store.get_job("fo")
    assert (job.failed_total, job.counters[("fail", 0, "train")]) == (1, 1)
    # WHEN the original's success (5 s on the slow worker) comes
    ok = run(task, 0, 5.0, "slow")
    recorded = engine.advancer.record([ok])
    # THEN it is the trial's outcome: counted in the failure's place, the failure un-counted
    assert recorded.recorded == [ok] and not recorded.duplicates
    kept = [r.result for r in engine.store.results("fo", 0) if r.result.shard_id == task.shard_id]
    assert [(r.status, r.backup) for r in kept] == [("succeeded", 0)]
    job = engine.store.get_job("fo")
    assert job.failed_total == 0 and job.counters.get(("fail", 0, "train"), 0) == 0
    assert job.ok(0, "train") == 1 and job.done(0, "train") == 1
    # AND both runs' costs count (the failure's as its COPY# item), once
    assert job.cost_micro_usd == 5_000 + 50_000
    assert_cost_invariant(engine, clients, "fo")
    # AND redeliveries of either change nothing: no second replacement, no cost twice
    for again in (failed, ok, failed):
        assert not engine.advancer.record([again]).recorded
    job = engine.store.get_job("fo")
    assert (job.failed_total, job.ok(0, "train"), job.cost_micro_usd) == (0, 1, 55_000)
    assert_cost_invariant(engine, clients, "fo")


def test_a_failure_over_the_failure_budget_is_never_replaced(engine: Engine, clients: dict[str, Any]) -> None:
    # GIVEN a sweep that allows no failure, and its first task's backup copy failed first: counted,
    # over max_failed_shards, so an ``advance`` reading the job now ends it FAILED for that failure
    engine.submit(asha_sweep("fb", trials=4, max_parallel=2, max_failed_shards=0))
    task = take(engine, clients)[0]
    failed = run(task, 1, 0.5, "fast", status="failed", error="CUDA out of memory", metrics={})
    assert engine.advancer.record([failed]).recorded
    assert engine.store.get_job("fb").failed_total == 1
    # WHEN the original's success comes before that advance froze the job (found in review: the
    # replacement un-counted the failure, and the job then ended FAILED with no failure counted)
    ok = run(task, 0, 5.0, "slow")
    recorded = engine.advancer.record([ok])
    # THEN the failure stays the trial's outcome and the job's reason; the success's run is a copy
    assert not recorded.recorded and recorded.duplicates == [ok]
    assert engine.advance("fb") == "FAILED"
    job = engine.store.get_job("fb")
    assert job.failed_total == 1 and job.ok(0, "train") == 0
    assert job.cost_micro_usd == 5_000 + 50_000
    assert_cost_invariant(engine, clients, "fb")


def test_a_plain_redelivery_or_an_ended_job_never_replaces_a_counted_failure(
    engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN a sweep's first task's original failed (counted)
    engine.submit(asha_sweep("fr", trials=4, max_parallel=2, max_failed_shards=2))
    first = take(engine, clients)[0]
    assert engine.advancer.record(
        [run(first, 0, 0.5, "a", status="failed", error="boom", metrics={})]
    ).recorded
    # WHEN a success of the same copy comes (the same attempt run again, not the other copy)
    assert not engine.advancer.record([run(first, 0, 0.5, "a")]).recorded
    # THEN the failure stays the counted outcome
    kept = [r.result for r in engine.store.results("fr", 0) if r.result.shard_id == first.shard_id]
    assert [r.status for r in kept] == ["failed"] and engine.store.get_job("fr").failed_total == 1
    # AND once the job ended, the other copy's success is a losing run: its cost counts, nothing else
    assert engine.store.request_cancel("fr")
    engine.advance("fr")
    assert engine.store.get_job("fr").status == "CANCELLED"
    before = engine.store.get_job("fr").cost_micro_usd
    assert not engine.advancer.record([run(first, 1, 0.5, "b")]).recorded
    job = engine.store.get_job("fr")
    assert job.failed_total == 1 and job.cost_micro_usd == before + 5_000
    assert_cost_invariant(engine, clients, "fr")


def test_a_retrys_run_of_a_task_another_run_answered_adds_its_cost(
    engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN a sweep's task answered by its generation-0 run (counted)
    engine.submit(asha_sweep("gen", trials=4, max_parallel=2))
    task = take(engine, clients)[0]
    assert engine.advancer.record([run(task, 0, 0.5, "a")]).recorded
    # WHEN the same copy's run of a later retry generation (a retry of a FAILED sweep sends every
    # task with no counted outcome again, while a run of it may still be going) reports too
    assert not engine.advancer.record([run(task, 0, 2.0, "b", generation=1)]).recorded
    # THEN it is a run of its own (COPY# keyed by copy and generation): its cost counts, once
    assert engine.store.get_job("gen").cost_micro_usd == 5_000 + 20_000
    engine.advancer.record([run(task, 0, 2.0, "b", generation=1)])
    assert engine.store.get_job("gen").cost_micro_usd == 25_000
    assert_cost_invariant(engine, clients, "gen")


def test_a_straggler_that_left_is_presumed_gone_while_fast_tasks_keep_ending() -> None:
    # GIVEN the slow worker (pace 10) freed lane 2 at 10.0 s; lane 0's trial 3 ended at 10.0 s on
    # worker "a"; from 25.0 s lane 1 runs a stream of tasks on fast worker "b", each recorded 0.6 s
    # after its decision and the next decided then: the straggler never took one (it left)
    base_d, base_r, base_rec = slow_worker_scene()
    base_r = [*base_r, replace(outcome(0, 3, 4.0), worker_id="a")]
    base_rec = {**base_rec, (0, 3): at(10.0)}
    stream = [(round(25.0 + 0.6 * i, 3), 4 + i) for i in range(57)]

    def slots(now: float) -> async_prefetch.Slots:
        d, r, rec = list(base_d), list(base_r), dict(base_rec)
        for decided, trial in stream:
            if decided <= now:
                d.append(decision(0, trial, 1, decided=decided))
                if decided + 0.6 <= now:
                    r.append(replace(outcome(0, trial, 5.0 + trial), worker_id="b"))
                    rec[(0, trial)] = at(decided + 0.6)
        epoch = async_prefetch.epoch(at(now))
        return async_prefetch.lane_slots(d, r, 3, 1, epoch, recorded=rec, added=[1, 3, 9])

    # THEN it is presumed idle (it may have taken the first task) until STRAGGLING × its longest
    # task (10 × 0.5 s × 2) plus the round trip after the first task available to it (25.0 s) ...
    assert slots(30.0).idle_slow == 1
    # ... and gone after, though each fast task's end hands its lane a later head
    assert [slots(now).idle_slow for now in (36.0, 40.0, 50.0, 59.0)] == [0, 0, 0, 0]
    assert async_prefetch.became_available([], set(), set(), None) == []


def test_became_available_is_each_tasks_decision_or_its_lanes_previous_outcome() -> None:
    # Lane 0: trial 0 decided at 0, recorded 2.0; trial 1 decided 1.0 (queued behind it: available
    # at 2.0); trial 2 decided 3.0, still running; trial 3 queued behind it (not available yet)
    decisions = [decision(0, t, 0, decided=d) for t, d in ((0, 0.0), (1, 1.0), (2, 3.0), (3, 3.5))]
    done = {(0, 0), (0, 1)}
    recorded = {(0, 0): at(2.0), (0, 1): at(2.5)}
    times = async_prefetch.became_available(decisions, done, set(), recorded)
    assert [round(t - async_prefetch.epoch(at(0.0)), 3) for t in times] == [0.0, 2.0, 3.0]  # type: ignore[operator]
