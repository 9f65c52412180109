"""A job resumes where it stopped (local endpoint): a retry reopens the round that failed, a
halving retry resends the rung's failed trials from their own models, and a resubmit finishes a
fan-out that died midway, each task enqueued once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from shardq.core import planning, rounds
from shardq.core.engine import Engine
from shardq.core.fanout import FanOutError
from shardq.core.jobstore import Outcome
from shardq.core.operations import retry_failed
from shardq.core.settings import Settings
from tests.helpers import Clock, FlakySQS, receive_all, result_for, tasks_of
from tests.requests import make_request


def take(engine: Engine) -> dict[int, Any]:
    """The task queue's tasks by shard id (received and deleted, as workers that hold them)."""
    return {t.shard_id: t for t in tasks_of(receive_all(engine.sqs, engine.settings.task_queue_url))}


def delayed(engine: Engine) -> int:
    """Messages the results queue holds back for their delay (armed deadline ticks)."""
    attrs = engine.sqs.get_queue_attributes(
        QueueUrl=engine.settings.results_queue_url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessagesDelayed"])


def test_retry_after_deadline_resumes_failed_round(make_engine: Callable[..., Engine], clock: Clock) -> None:
    # GIVEN a 3-round data-parallel job whose rounds close at a 60 s deadline with 3 of 4 shards
    engine = make_engine(clock=clock)
    engine.submit(
        make_request(
            job_id="dl",
            shards=4,
            rounds=3,
            max_parallel=4,
            participation={"min_shards": 3},
            quorum={"deadline_seconds": 60},
        )
    )
    engine.ingest([Outcome(result_for(t)) for t in take(engine).values()])
    (reduce0,) = take(engine).values()
    engine.ingest([Outcome(result_for(reduce0))])
    # ... whose round 1 got one result before its deadline passed (shards 1-3 stalled)
    stalled = take(engine)
    engine.ingest([Outcome(result_for(stalled[0]))])
    clock.advance(120)
    engine.ingest([rounds.Tick("dl", 1, clock())])
    job = engine.store.get_job("dl")
    assert (job.status, job.round) == ("FAILED", 1) and "reached its deadline" in (job.error or "")
    ticks = delayed(engine)
    # WHEN the operator retries it
    report = retry_failed(engine, "dl")
    # THEN round 1 reopens with a fresh deadline and its tick (it does not fail again at once),
    # and only its stalled shards go back on the queue, from round 0's reduced model
    job = engine.store.get_job("dl")
    assert (report.status, report.round, report.retried) == ("RUNNING", 1, [1, 2, 3])
    assert (job.status, job.round, job.phase) == ("RUNNING", 1, "train")
    assert engine.advance("dl") == "RUNNING" and rounds.verdict(job, clock()) == rounds.WAIT
    assert delayed(engine) == ticks + 1
    again = take(engine)
    assert sorted(again) == [1, 2, 3] and {t.round for t in again.values()} == {1}
    assert {t.init_model_uri for t in again.values()} == {result_for(reduce0).artifact_uri}
    # AND the job runs on from there to the end, round 0 never trained again
    engine.ingest([Outcome(result_for(t)) for t in again.values()])
    for _ in range(2):  # round 1's reduce, round 2's training, round 2's reduce
        (reduce,) = take(engine).values()
        engine.ingest([Outcome(result_for(reduce))])
        if reduce.round == 1:
            engine.ingest([Outcome(result_for(t)) for t in take(engine).values()])
    job = engine.store.get_job("dl")
    assert job.status == "SUCCEEDED", job.error
    assert [r.result.round for r in engine.store.reduce_results("dl", 3)] == [0, 1, 2]


def test_halving_retry_resends_only_failed_rung_trials_from_their_models(
    engine: Engine, settings: Settings
) -> None:
    # GIVEN a 9-trial halving sweep (eta 3, budgets 1, 3, 9) allowed one failed trial: rung 0
    # promoted trials 3, 5 and 6 (loss |i - 5| + 0.5; trial 4 failed)
    engine.submit(
        make_request(
            "sweep",
            job_id="sh",
            max_failed_shards=1,
            early_stopping={"eta": 3, "min_budget": 1, "max_budget": 9},
        )
    )
    rung0 = take(engine)
    engine.ingest(
        [
            Outcome(result_for(t, status="failed") if i == 4 else result_for(t, loss=abs(i - 5) + 0.5))
            for i, t in rung0.items()
        ]
    )
    rung1 = take(engine)
    assert sorted(rung1) == [3, 5, 6]
    models = {i: t.init_model_uri for i, t in rung1.items()}
    # ... and at rung 1 trial 3 succeeded, trial 5 failed (over the budget: the job FAILED) and
    # trial 6 was dropped unrun
    engine.ingest([Outcome(result_for(rung1[3], loss=0.2)), Outcome(result_for(rung1[5], status="failed"))])
    assert engine.status("sh").status == "FAILED"
    # WHEN the operator retries it
    report = retry_failed(engine, "sh")
    # THEN exactly rung 1's failed and unrun trials go back on the queue, each from its own
    # rung-0 model and with rung 1's budget, no trial that rung 0 stopped
    assert (report.round, report.retried) == (1, [5, 6])
    again = take(engine)
    assert sorted(again) == [5, 6]
    for i, t in again.items():
        assert (t.round, t.init_model_uri, t.hyperparameters["epochs"]) == (1, models[i], 2)
        assert (
            t.init_model_uri
            == planning.Layout(settings.artifact_bucket, "sh").shard_output(0, i) + "model.npz"
        )
    # AND their results count (none is refused as a stopped trial's), the rung closes and the
    # sweep finishes
    assert (
        engine.ingest([Outcome(result_for(again[5], loss=0.4)), Outcome(result_for(again[6], loss=0.3))])
        == []
    )
    (best,) = take(engine).values()
    assert (best.round, best.shard_id) == (2, 3)
    engine.ingest([Outcome(result_for(best, loss=0.1))])
    assert engine.status("sh").status == "SUCCEEDED"


def test_fanout_dies_midway_resubmit_finishes(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a 700-task map request whose splitter dies after 55 SendMessageBatch calls (550 tasks;
    # the cursor checkpointed the first chunk of 500)
    request = make_request("map", job_id="half", shards=700, num_samples=7000)
    engine.fanout.sqs = FlakySQS(clients["sqs"], die_after=55)
    with pytest.raises(FanOutError):
        engine.submit(request)
    # THEN the job exists and says it is still enqueuing, not RUNNING with tasks missing
    view = engine.status("half")
    assert (view.status, view.enqueuing) == ("RUNNING", "ENQUEUING 500/700 sent")
    # WHEN the same request is submitted again (the real client now)
    engine.fanout.sqs = clients["sqs"]
    answer = engine.submit(request)
    # THEN it is the same job, its fan-out finished: every task on the queue exactly once
    assert (answer["job_id"], answer["created"], answer["status"]) == ("half", False, "RUNNING")
    assert engine.status("half").enqueuing is None
    tasks = tasks_of(receive_all(clients["sqs"], settings.task_queue_url))
    assert Counter(t.shard_id for t in tasks) == Counter(range(700))
    # AND the job runs to SUCCEEDED on those tasks
    assert engine.ingest([Outcome(result_for(t)) for t in tasks]) == []
    view = engine.status("half")
    assert (view.status, view.done, view.failed) == ("SUCCEEDED", 700, 0)
