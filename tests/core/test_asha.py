"""ASHA: asynchronous successive halving (``early_stopping.method "asha"``), on the local cloud.

Each test drives the real engine (DynamoDB, SQS and S3 of the local cloud): tasks are taken from
the task queue, and results reported for the chosen ones, in a scripted order.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from typing import Any

import pytest

from shardq.core import async_sweep, operations
from shardq.core.contracts import ShardTask, TrainingRequest, ValidationError
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from tests.helpers import receive_all, result_for, tasks_of
from tests.requests import make_request

# The engines run on the test's clock: results reported at once (the clock stands still) are
# faster than their 0.5 s, so no prefetch is measured and exactly max_parallel tasks are in flight,
# however loaded the machine (on the wall clock a slow pass measured a round trip and prefetched).
pytestmark = pytest.mark.controlled_clock

ASHA = {"method": "asha", "eta": 3, "min_budget": 1, "max_budget": 9}


def asha_sweep(job_id: str, *, trials: int = 9, max_parallel: int = 3, **extra: Any) -> dict[str, Any]:
    """A random-search ASHA sweep of ``trials`` trials minimizing ``loss``, ``max_parallel`` in flight."""
    fields: dict[str, Any] = {
        "search_space": {"lr": {"log_uniform": [1e-4, 1e-1]}, "l2": [0.0, 0.01]},
        "search": {"method": "random", "num_trials": trials, "seed": 7},
        "early_stopping": dict(ASHA),
        "max_parallel": max_parallel,
        **extra,
    }
    return make_request("sweep", job_id=job_id, **fields)


def take(engine: Engine, clients: dict[str, Any]) -> list[ShardTask]:
    """Every task on the queue now (deleted: a FIFO group hides the rest while one is in flight)."""
    return tasks_of(receive_all(clients["sqs"], engine.settings.task_queue_url, max_empty=1))


def report(engine: Engine, task: ShardTask, loss: float | None = None, status: str = "succeeded") -> None:
    assert engine.ingest([Outcome(result_for(task, status=status, loss=loss))]) == []


def loss_of(task: ShardTask) -> float:
    """A scripted objective: trial ``t`` has loss ``(t % 5 + 1) / (rung + 1)`` (trials 0, 5 best)."""
    return (task.shard_id % 5 + 1) / (task.round + 1)


def test_asha_is_validated_and_planned_as_halving_is() -> None:
    request = TrainingRequest.from_dict(asha_sweep("v"))
    es = request.early_stopping
    assert es is not None and es.method == "asha" and es.budgets == [1, 3, 9]
    assert request.asynchronous and async_sweep.rung_bounds(request) == [9, 7, 5]
    with pytest.raises(ValidationError) as err:
        TrainingRequest.from_dict(asha_sweep("v", early_stopping={**ASHA, "method": "hyperband"}))
    assert "early_stopping.method" in str(err.value) and "asha" in str(err.value)


def test_asha_keeps_max_parallel_in_flight_and_promotes_before_the_rung_is_full(
    engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN a 9-trial ASHA sweep (eta 3), 3 in flight
    engine.submit(asha_sweep("a1"))
    first = take(engine, clients)
    assert sorted((t.round, t.shard_id) for t in first) == [(0, 0), (0, 1), (0, 2)]
    assert {t.hyperparameters["epochs"] for t in first} == {1}
    # WHEN trials 0 and 1 report and trial 2 stays slow (still running)
    slow = first[2]
    for t in first[:2]:
        report(engine, t, loss_of(t))
    # THEN each freed slot took a new trial at once (no worker idles) ...
    drawn = take(engine, clients)
    assert sorted((t.round, t.shard_id) for t in drawn) == [(0, 3), (0, 4)]
    # ... and as soon as rung 0 has 3 results, its best (top 3 // 3 = 1) is promoted, while the slow
    # trial 2 is still running: synchronous halving would wait for all 9 trials of rung 0
    report(engine, drawn[0], loss_of(drawn[0]))  # trial 3: loss 4
    promoted = take(engine, clients)
    assert [(t.round, t.shard_id) for t in promoted] == [(1, 0)]
    assert promoted[0].hyperparameters["epochs"] == 2  # 3 in all: resumes from its rung-0 model
    assert promoted[0].init_model_uri and promoted[0].init_model_uri.endswith("shard-000000/model.npz")
    decisions = engine.store.sweep_decisions("a1", 1)
    assert [(d.trial, d.known, d.rank, d.rule) for d in decisions] == [(0, 3, 0, "asha")]
    job = engine.store.get_job("a1")
    progress = async_sweep.async_progress(job)
    assert (progress.done, progress.in_flight) == (3, 3)
    assert progress.text() == "3 tasks done, 3 in flight, up to 21"
    # The slow trial finishes later and counts as any other
    report(engine, slow, loss_of(slow))


def run_to_end(
    engine: Engine, clients: dict[str, Any], loss: Any = loss_of, limit: int = 200
) -> list[ShardTask]:
    """Report every task the sweep sends, in send order, until none is left; returns them."""
    ran: list[ShardTask] = []
    for _ in range(limit):
        tasks = take(engine, clients)
        if not tasks:
            return ran
        for t in tasks:
            value = loss(t)
            report(
                engine, t, value if value is not None else 1.0, "succeeded" if value is not None else "failed"
            )
            ran.append(t)
    raise AssertionError("the sweep did not end")


def test_asha_runs_to_the_full_budget_and_succeeds_with_rung_histories(
    engine: Engine, clients: dict[str, Any]
) -> None:
    engine.submit(asha_sweep("a2"))
    ran = run_to_end(engine, clients)
    job = engine.store.get_job("a2")
    assert job.status == "SUCCEEDED", job.error
    # every trial trained rung 0 once; 3 went to rung 1; 1 to the full budget: as halving's 9 + 3 + 1
    keys = [(t.round, t.shard_id) for t in ran]
    assert len(keys) == len(set(keys)) == 13
    assert sum(1 for r, _ in keys if r == 2) == 1
    manifest = load_manifest(clients, job.result_uri)
    best = manifest["best"]
    assert best["rung"] == 2 and [h["budget"] for h in best["rungs"]] == [1, 3, 9]
    assert best["trial"] % 5 == 0  # the scripted best trials (0 or 5)
    assert manifest["early_stopping"]["budget_spent"] == 9 * 1 + 3 * 2 + 1 * 6


def load_manifest(clients: dict[str, Any], uri: str | None) -> dict[str, Any]:
    bucket, key = (uri or "").removeprefix("s3://").split("/", 1)
    return json.loads(clients["s3"].get_object(Bucket=bucket, Key=key)["Body"].read())


def reference_asha(
    finish_order: list[int],
    trials: int,
    eta: int,
    rungs: int,
    slots: int,
    value: Any,
    eager: bool = False,
) -> list[tuple[int, int]]:
    """The paper's ASHA (Li et al. 2020, Algorithm 2), written plainly: each free worker calls
    ``get_job``: the highest rung with a top-``n // eta`` trial not yet promoted gives a promotion,
    else a new trial is drawn; when nothing runs and nothing is left to draw, a rung that promoted
    nobody promotes its best (the finite sweep's end). ``finish_order[i]`` picks which running job
    (by dispatch order) finishes at step ``i``. Returns the jobs ``(rung, trial)`` in dispatch order.
    ``eager``: Optuna's variant, the top ``max(1, n // eta)`` of a rung with results."""
    results: dict[int, dict[int, float]] = {k: {} for k in range(rungs)}
    promoted: dict[int, set[int]] = {k: set() for k in range(rungs)}
    dispatched: list[tuple[int, int]] = []
    running: list[tuple[int, int]] = []

    def get_job(drain: bool) -> tuple[int, int] | None:
        for k in range(rungs - 2, -1, -1):
            ranked = sorted(results[k], key=lambda t: (results[k][t], t))
            if drain:
                if ranked and not promoted[k]:
                    promoted[k].add(ranked[0])
                    return (k + 1, ranked[0])
                continue
            top = len(results[k]) // eta
            for t in ranked[: max(1, top) if eager and results[k] else top]:
                if t not in promoted[k]:
                    promoted[k].add(t)
                    return (k + 1, t)
        drawn = sum(1 for r, _ in dispatched if r == 0)
        return (0, drawn) if drawn < trials and not drain else None

    def fill() -> None:
        while len(running) < slots:
            job = get_job(False) or (get_job(True) if not running else None)
            if job is None:
                return
            dispatched.append(job)
            running.append(job)

    fill()
    step = 0
    while running:
        rung, trial = running.pop(finish_order[step] % len(running))
        step += 1
        results[rung][trial] = value(rung, trial)
        fill()
    return dispatched


def scripted_value(rung: int, trial: int) -> float:
    """Distinct losses, no ties: a hash of (rung, trial)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{rung}:{trial}".encode()).digest()[:4], "big") / 2**32


def finish_in_order(engine: Engine, clients: dict[str, Any], order: list[int]) -> list[tuple[int, int]]:
    """Run a submitted sweep to its end, finishing its running tasks in ``order`` (each entry picks
    one of those running, modulo their number) with ``scripted_value``; the (rung, trial) of every
    task it sent, in the order sent."""
    running: list[ShardTask] = []
    sent: list[tuple[int, int]] = []
    step = 0
    while True:
        new = sorted(take(engine, clients), key=lambda t: (t.shard_id, t.round))
        running.extend(new)
        sent.extend((t.round, t.shard_id) for t in new)
        if not running:
            return sent
        task = running.pop(order[step] % len(running))
        step += 1
        report(engine, task, scripted_value(task.round, task.shard_id))


@pytest.mark.parametrize("seed", [1, 2])
def test_asha_equals_the_papers_rule_on_a_scripted_arrival_order(
    engine: Engine, clients: dict[str, Any], seed: int
) -> None:
    # GIVEN 12 trials, eta 3 over 3 rungs, 4 in flight, and a scripted (seeded) order in which the
    # running tasks finish
    import random

    rng = random.Random(seed)
    order = [rng.randrange(1000) for _ in range(100)]
    expected = reference_asha(order, trials=12, eta=3, rungs=3, slots=4, value=scripted_value)
    # WHEN shardq runs the sweep and the tasks finish in that order
    engine.submit(asha_sweep(f"ref{seed}", trials=12, max_parallel=4))
    sent = finish_in_order(engine, clients, order)
    # THEN it dispatched exactly the reference's jobs, in the same order
    assert sent == expected
    assert engine.store.get_job(f"ref{seed}").status == "SUCCEEDED"


def test_duplicate_late_and_concurrent_results_never_promote_twice(
    engine: Engine, make_engine: Any, clients: dict[str, Any]
) -> None:
    # GIVEN an ASHA sweep with 3 trials of rung 0 in flight
    engine.submit(asha_sweep("dup"))
    first = take(engine, clients)
    results = [result_for(t, loss=loss_of(t)) for t in first]
    # WHEN every result arrives twice in one batch, again in a later batch, and once more through
    # a second aggregator (another Lambda invocation with its own caches)
    assert engine.ingest([Outcome(r) for r in results + results]) == []
    assert engine.ingest([Outcome(r) for r in results]) == []
    other = make_engine()
    assert other.ingest([Outcome(results[0])]) == []
    # THEN the rung's best was promoted once, and the two freed slots took two new trials once
    tasks = take(engine, clients)
    assert sorted((t.round, t.shard_id) for t in tasks) == [(0, 3), (0, 4), (1, 0)]
    decisions = engine.store.sweep_decisions("dup")
    assert len(decisions) == len({d.key for d in decisions}) == 6
    # and a pass on a state another pass already moved decides nothing (the loser reads again)
    seq, _ = engine.store.sweep_cursor("dup")
    stale = async_sweep.SweepDecision(rung=0, trial=5, lane=9, seq=seq, params={})
    assert not engine.store.decide("dup", seq - 1, [stale])
    assert len(engine.store.sweep_decisions("dup")) == 6


def test_a_diverged_trial_ranks_last_and_is_never_promoted(engine: Engine, clients: dict[str, Any]) -> None:
    engine.submit(asha_sweep("nan"))
    a, b, c = take(engine, clients)
    # trial 0 diverges (NaN loss), trial 1 reports inf: neither is a candidate; trial 2 is
    report(engine, a, math.nan)
    report(engine, b, math.inf)
    report(engine, c, 5.0)
    tasks = take(engine, clients)
    assert (1, 2) in [(t.round, t.shard_id) for t in tasks]
    assert all(t.round == 0 for t in tasks if t.shard_id in (0, 1))
    rows = {r.result.shard_id: r.result.status for r in engine.store.results("nan", 0)}
    assert rows == {0: "diverged", 1: "diverged", 2: "succeeded"}


def test_every_trial_diverged_fails_naming_the_fix(engine: Engine, clients: dict[str, Any]) -> None:
    engine.submit(asha_sweep("alldiv", trials=4, max_parallel=2))
    run_to_end(engine, clients, loss=lambda t: math.nan)
    job = engine.store.get_job("alldiv")
    assert job.status == "FAILED"
    assert "none has a finite loss" in (job.error or "") and "narrow the search space" in (job.error or "")
    assert engine.store.sweep_decisions("alldiv", 1) == []


def test_cancel_sends_no_new_task(engine: Engine, clients: dict[str, Any]) -> None:
    engine.submit(asha_sweep("cx"))
    first = take(engine, clients)
    report(engine, first[0], 1.0)
    take(engine, clients)
    # WHEN the sweep is cancelled while two trials run, and then one of them reports
    operations.cancel(engine, "cx")
    report(engine, first[1], 0.5)
    # THEN no new task goes out; the job is CANCELLED and the decisions stopped
    assert take(engine, clients) == []
    assert engine.store.get_job("cx").status == "CANCELLED"
    assert len(engine.store.sweep_decisions("cx")) == 4


def test_failures_free_their_slot_until_max_failed_shards(engine: Engine, clients: dict[str, Any]) -> None:
    engine.submit(asha_sweep("ff", max_failed_shards=1))
    a, b, _ = take(engine, clients)
    report(engine, a, status="failed")
    # a failure within the budget frees its slot for the next trial, and is never promoted
    assert [(t.round, t.shard_id) for t in take(engine, clients)] == [(0, 3)]
    report(engine, b, status="failed")
    job = engine.store.get_job("ff")
    assert job.status == "FAILED" and "max_failed_shards=1" in (job.error or "")
    assert take(engine, clients) == []


def test_a_worker_killed_mid_trial_is_redelivered_and_counted_once(
    engine: Engine, clients: dict[str, Any]
) -> None:
    engine.submit(asha_sweep("kill", trials=3, max_parallel=1))
    sqs, url = clients["sqs"], engine.settings.task_queue_url
    # GIVEN a worker that received the task and died (no result, no delete): the lease runs out
    msg = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, VisibilityTimeout=1, WaitTimeSeconds=1)
    (dead,) = msg["Messages"]
    # WHEN another worker receives it again and reports it
    time.sleep(1.2)
    again = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=2)["Messages"]
    assert [m["Body"] for m in again] == [dead["Body"]]
    sqs.delete_message(QueueUrl=url, ReceiptHandle=again[0]["ReceiptHandle"])
    task = ShardTask.from_json(again[0]["Body"])
    report(engine, task, 1.0)
    # THEN it counts once and its slot takes the next trial
    assert [(t.round, t.shard_id) for t in take(engine, clients)] == [(0, 1)]
    assert engine.store.get_job("kill").done(0, "train") == 1


def test_a_result_for_a_trial_never_decided_is_refused(engine: Engine, clients: dict[str, Any]) -> None:
    engine.submit(asha_sweep("fx"))
    (t, *_) = take(engine, clients)
    forged = [Outcome(result_for(replace(t, round=1)))]
    ((_, error),) = engine.ingest(forged)
    assert "does not take part in round 1" in str(error)
    assert engine.store.get_job("fx").done(1, "train") == 0


def test_retry_sends_failed_and_unfinished_trials_again_and_the_sweep_goes_on(
    engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN an ASHA sweep with no failure budget: trial 0 fails, so the job FAILS while trials
    # 1 and 2 still run; their results come after the end (late, never counted)
    engine.submit(asha_sweep("rt", max_failed_shards=0))
    a, b, c = take(engine, clients)
    report(engine, a, status="failed")
    assert engine.store.get_job("rt").status == "FAILED"
    report(engine, b, 1.0)
    assert engine.store.get_job("rt").ok(0, "train") == 0  # late: recorded apart, never counted
    # WHEN the operator retries
    out = operations.retry_failed(engine, "rt")
    # THEN the failed trial and the two whose results were late go out again, under a new
    # generation, and the sweep runs to its end
    assert out.retried == [0, 1, 2] and out.status == "RUNNING"
    again = take(engine, clients)
    assert sorted((t.round, t.shard_id, t.generation) for t in again) == [(0, 0, 1), (0, 1, 1), (0, 2, 1)]
    assert take(engine, clients) == []
    for t in again:
        report(engine, t, loss_of(t))
    run_to_end(engine, clients)
    job = engine.store.get_job("rt")
    assert job.status == "SUCCEEDED" and job.failed_total == 0
    # a retry of a sweep with nothing failed is refused with the reason
    with pytest.raises(operations.OperationError, match="is SUCCEEDED"):
        operations.retry_failed(engine, "rt")
    del c
