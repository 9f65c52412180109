"""Pipelines on the local cloud: a job that follows another waits, starts once, or ends naming it.

The trigger is the real one: each finished job's ``Job Finished`` event goes to the local cloud's
EventBridge, a rule (as the stack's, narrowed to this test's job ids) routes it to a queue, and
the pipeline Lambda's handler (``lambdas.pipeline.followers_of``) is called with each event, as
the rule's Lambda target is on AWS. Real workers train; the aggregator's work runs inline.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from shardq.core.contracts import ValidationError
from shardq.core.engine import Engine, JobConflict
from shardq.core.jobstore import JobNotFound
from shardq.core.operations import OperationError, cancel, retry_failed
from shardq.core.pipeline import release
from shardq.core.settings import Settings
from tests.finished import aggregate, workers
from tests.helpers import LambdaContext, receive_all, tasks_of

pytestmark = pytest.mark.local_cloud

DATA = "synthetic://linear?dim=8&noise=0.05&seed=7"
TRAIN = "examples.linear:train"


@pytest.fixture
def prefix() -> str:
    return f"pipe-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def events(clients: dict[str, Any], prefix: str) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """This test's Job Finished events, as EventBridge delivers them to a rule's target."""
    sqs, bus = clients["sqs"], clients["events"]
    url = sqs.create_queue(QueueName=f"{prefix}-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    pattern = {
        "source": ["shardq"],
        "detail-type": ["Job Finished"],
        "detail": {"job_id": [{"prefix": prefix}]},
    }
    bus.put_rule(Name=prefix, EventPattern=json.dumps(pattern), State="ENABLED")
    bus.put_targets(Rule=prefix, Targets=[{"Id": "queue", "Arn": arn}])

    def received() -> list[dict[str, Any]]:
        out = []
        while True:
            msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
                "Messages", []
            )
            if not msgs:
                return out
            for m in msgs:
                out.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])

    yield received
    bus.remove_targets(Rule=prefix, Ids=["queue"])
    bus.delete_rule(Name=prefix)
    sqs.delete_queue(QueueUrl=url)


@pytest.fixture
def drive(
    engine: Engine, lambda_env: Settings, events: Callable[[], list[dict[str, Any]]]
) -> Callable[..., list[dict[str, Any]]]:
    """Run the jobs to their ends: workers poll, results are recorded, each event reaches the
    pipeline handler. Returns every event handled."""
    from lambdas.pipeline import followers_of

    def run(*job_ids: str, steps: int = 400) -> list[dict[str, Any]]:
        crew = workers(engine)
        handled: list[dict[str, Any]] = []
        for _ in range(steps):
            for w in crew:
                w.poll_once()
            aggregate(engine)
            for event in events():
                followers_of(event)
                handled.append(event)
            if all(engine.store.get_job(j).terminal for j in job_ids):
                return handled + [followers_of(e) and e for e in events()]  # the last events too
        raise TimeoutError(f"{job_ids} did not all end: {[engine.store.get_job(j).status for j in job_ids]}")

    return run


def sweep(job_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "kind": "sweep",
        "dataset": {"uri": DATA, "num_samples": 600},
        "search_space": {"lr": [0.2, 0.05, 0.001]},
        "hyperparameters": {"epochs": 2},
        "objective": {"metric": "val_loss", "direction": "minimize"},
        "entrypoint": TRAIN,
        **fields,
    }


def data_parallel(job_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "kind": "data_parallel",
        "dataset": {"uri": DATA, "num_samples": 800},
        "sharding": {"shard_count": 2},
        "rounds": 2,
        "hyperparameters": {"epochs": 1, "lr": 0.01},
        "entrypoint": TRAIN,
        **fields,
    }


def evaluation(job_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "kind": "map",
        "dataset": {"uri": DATA, "num_samples": 800},
        "sharding": {"shard_count": 2},
        "entrypoint": "examples.linear:score",
        **fields,
    }


def manifest(engine: Engine, job_id: str) -> dict[str, Any]:
    uri = engine.store.get_job(job_id).result_uri
    assert uri
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return dict(json.loads(engine.s3.get_object(Bucket=bucket, Key=key)["Body"].read()))


def test_sweep_then_the_best_configuration_then_a_map_evaluation(
    engine: Engine, drive: Callable[..., list[dict[str, Any]]], prefix: str
) -> None:
    # GIVEN a sweep, a data_parallel job after it (its best hyperparameters), and a map evaluation
    # after that one (its final model), all three submitted at once
    s, d, m = f"{prefix}-sweep", f"{prefix}-train", f"{prefix}-eval"
    assert engine.submit(sweep(s))["status"] == "RUNNING"
    assert engine.submit(data_parallel(d, after={"job_id": s, "use": "best"}))["status"] == "WAITING"
    assert engine.submit(evaluation(m, after={"job_id": d, "use": "final_model"}))["status"] == "WAITING"
    # THEN the followers wait with nothing enqueued
    for job_id in (d, m):
        job = engine.store.get_job(job_id)
        assert job.status == "WAITING"
        assert job.enqueued(0, "train") == 0
    # WHEN the sweep runs; its Job Finished event starts the training; its event the evaluation
    handled = drive(s, d, m)
    best = manifest(engine, s)["best"]
    trained, scored = engine.store.get_job(d), engine.store.get_job(m)
    assert [engine.store.get_job(j).status for j in (s, d, m)] == ["SUCCEEDED"] * 3
    # THEN the training ran with the best trial's lr (over its own epochs), from scratch
    assert trained.request.hyperparameters == {"epochs": 1, "lr": best["hyperparameters"]["lr"]}
    assert best["hyperparameters"]["lr"] != 0.01
    assert trained.request.after is not None and trained.request.after.job_id == s
    # AND the evaluation scored the training's final model, shard by shard
    final = manifest(engine, d)["final_model_uri"]
    assert scored.request.model["init_uri"] == final
    evaluated = manifest(engine, m)
    mse = evaluated["metrics"]["mse"]["mean"]
    assert np.isfinite(mse)
    assert mse < 1.0  # a trained model; a zero model scores ≈ 7 on this data
    assert {e["detail"]["job_id"] for e in handled} >= {s, d}


def test_an_upstream_failure_ends_the_chain_naming_each_upstream_job(
    engine: Engine, drive: Callable[..., list[dict[str, Any]]], prefix: str
) -> None:
    # GIVEN a → b → c, where a fails (its shard 2 fails every attempt, no failure budget)
    a, b, c = f"{prefix}-a", f"{prefix}-b", f"{prefix}-c"
    engine.submit(
        data_parallel(
            a,
            sharding={"shard_count": 3},
            rounds=1,
            entrypoint="tests.dashboard.training:train_except_shard_2",
        )
    )
    engine.submit(data_parallel(b, after={"job_id": a, "use": "final_model"}))
    engine.submit(evaluation(c, after={"job_id": b, "use": "final_model"}))
    drive(a, b, c)
    # THEN b ends FAILED naming a, and c ends FAILED naming b; neither ran a task
    jobs = {j: engine.store.get_job(j) for j in (a, b, c)}
    assert [jobs[j].status for j in (a, b, c)] == ["FAILED"] * 3
    assert f"upstream job '{a}' ended FAILED" in (jobs[b].error or "")
    assert f"upstream job '{b}' ended FAILED" in (jobs[c].error or "")
    assert jobs[b].enqueued(0, "train") == jobs[c].enqueued(0, "train") == 0
    assert manifest(engine, b)["status"] == "FAILED"
    assert manifest(engine, b)["error"] == jobs[b].error
    # AND a retry of a follower that never started is refused (its request was never resolved)
    with pytest.raises(OperationError, match=f"job {b} never started: upstream job '{a}' ended FAILED"):
        retry_failed(engine, b)
    assert engine.store.get_job(b).status == "FAILED"


def test_a_cancelled_upstream_ends_its_follower_and_a_cancelled_follower_never_starts(
    engine: Engine, drive: Callable[..., list[dict[str, Any]]], prefix: str
) -> None:
    a, b, c = f"{prefix}-a", f"{prefix}-b", f"{prefix}-c"
    engine.submit(sweep(a))
    engine.submit(data_parallel(b, after={"job_id": a, "use": "best"}))
    engine.submit(data_parallel(c, after={"job_id": a, "use": "final_model"}))
    # WHEN the follower c is cancelled while it waits THEN it ends CANCELLED at once
    report = cancel(engine, c)
    assert report.cancelled and engine.store.get_job(c).status == "CANCELLED"
    # WHEN the upstream sweep is cancelled THEN b ends FAILED naming it
    cancel(engine, a)
    drive(a, b, c)
    assert engine.store.get_job(a).status == "CANCELLED"
    assert "ended CANCELLED" in (engine.store.get_job(b).error or "")
    assert engine.store.get_job(c).status == "CANCELLED"
    assert engine.store.get_job(c).enqueued(0, "train") == 0


def test_following_a_job_that_already_succeeded_starts_at_once_and_exactly_once(
    engine: Engine, drive: Callable[..., list[dict[str, Any]]], prefix: str
) -> None:
    a, b = f"{prefix}-a", f"{prefix}-b"
    engine.submit(data_parallel(a, rounds=1))
    drive(a)
    # WHEN a job follows a job that already SUCCEEDED THEN the submit starts it
    answer = engine.submit(data_parallel(b, rounds=1, after={"job_id": a, "use": "final_model"}))
    assert answer["status"] == "RUNNING"
    # AND a resubmit, a redelivered event and a retried trigger start nothing twice
    assert (
        engine.submit(data_parallel(b, rounds=1, after={"job_id": a, "use": "final_model"}))["created"]
        is False
    )
    engine.upstream_finished(a)
    release(engine, b)
    job = engine.store.get_job(b)
    assert job.enqueued(0, "train") == 2
    depth = engine.sqs.get_queue_attributes(
        QueueUrl=engine.settings.task_queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]["ApproximateNumberOfMessages"]
    assert int(depth) == 2
    assert job.model_uri == manifest(engine, a)["final_model_uri"]
    drive(b)
    assert engine.store.get_job(b).status == "SUCCEEDED"


def test_bad_pipelines_are_refused_at_submit_and_nothing_is_created(engine: Engine, prefix: str) -> None:
    a, b = f"{prefix}-a", f"{prefix}-b"
    # an unknown upstream job
    with pytest.raises(ValidationError, match=f"after.job_id '{prefix}-nope' names no job"):
        engine.submit(data_parallel(b, after={"job_id": f"{prefix}-nope", "use": "final_model"}))
    with pytest.raises(JobNotFound):
        engine.store.get_job(b)
    # best of a job that is not a sweep
    engine.submit(data_parallel(a, rounds=1))
    with pytest.raises(ValidationError, match="needs an upstream job of kind sweep"):
        engine.submit(data_parallel(b, after={"job_id": a, "use": "best"}))
    with pytest.raises(JobNotFound):
        engine.store.get_job(b)
    # itself, and a malformed after
    with pytest.raises(ValidationError) as err:
        engine.submit(data_parallel(b, after={"job_id": b, "use": "model"}))
    assert "cannot follow itself" in str(err.value) and "after.use must be one of best, final_model" in str(
        err.value
    )
    # a cycle: b follows a; a submitted again to follow b
    engine.submit(data_parallel(b, after={"job_id": a, "use": "final_model"}))
    with pytest.raises(ValidationError, match=f"closes a cycle: {a} → {b} → {a}"):
        engine.submit(data_parallel(a, rounds=1, after={"job_id": b, "use": "final_model"}))
    with pytest.raises(JobConflict):  # the same id with another request, as for any job
        engine.submit(data_parallel(b, after={"job_id": a, "use": "final_model"}, rounds=3))


@pytest.mark.parametrize(
    ("up_kind", "use", "fix"),
    [
        ("data_parallel", "best", "use final_model instead (use best takes only a sweep job)"),
        (
            "map",
            "best",
            "a map job offers neither; follow a job of a kind that offers one (use best takes a sweep job; "
            "use final_model takes a data_parallel or sweep job)",
        ),
        ("map", "final_model", "a map job offers neither"),
    ],
)
def test_following_a_job_of_the_wrong_kind_names_the_kinds_each_use_takes(
    engine: Engine, prefix: str, up_kind: str, use: str, fix: str
) -> None:
    a, b = f"{prefix}-a", f"{prefix}-b"
    engine.submit(data_parallel(a, rounds=1) if up_kind == "data_parallel" else evaluation(a))
    with pytest.raises(ValidationError) as err:
        engine.submit(data_parallel(b, after={"job_id": a, "use": use}))
    assert f"'{a}' is a {up_kind} job; {fix}" in str(err.value)
    assert "follow a sweep or a data_parallel job" not in str(err.value)
    with pytest.raises(JobNotFound):
        engine.store.get_job(b)


def test_the_handler_refuses_an_event_that_is_not_a_job_finished_event(lambda_env: Settings) -> None:
    from lambdas.pipeline import followers_of

    with pytest.raises(ValueError, match="not a shardq 'Job Finished' event"):
        followers_of({"detail-type": "Object Created", "detail": {"job_id": "x"}})
    with pytest.raises(ValueError, match="not a shardq 'Job Finished' event"):
        followers_of({"detail-type": "Job Finished", "detail": {}})
    # a job nothing follows (or one this table never saw): nothing to do
    assert followers_of({"detail-type": "Job Finished", "detail": {"job_id": "no-followers"}}) == {}


def test_a_follower_too_big_for_one_invocation_is_handed_to_the_splitter_and_sent_once(
    engine: Engine, lambda_env: Settings, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lambdas import pipeline, splitter
    from lambdas.common import CONTINUE_KEY

    # GIVEN a training job, and two map evaluations waiting for it: one of 1,100 shards (more
    # than one 500-task chunk) and one of 2
    a, big, small = f"{prefix}-a", f"{prefix}-big", f"{prefix}-small"
    engine.submit(data_parallel(a, rounds=1))
    after = {"job_id": a, "use": "final_model"}
    wide = {"dataset": {"uri": DATA, "num_samples": 1_100}, "sharding": {"shard_count": 1_100}}
    assert engine.submit(evaluation(big, after=after, **wide))["status"] == "WAITING"
    assert engine.submit(evaluation(small, after=after))["status"] == "WAITING"
    crew = workers(engine)
    while not engine.store.get_job(a).terminal:  # the training runs; its event is not handled yet
        for w in crew:
            w.poll_once()
        aggregate(engine)
    assert engine.store.get_job(a).status == "SUCCEEDED"
    # The splitter's asynchronous continuation, as ``continue_job`` invokes it (Lambda runs it
    # after this invocation returned): kept here, then run below.
    handed: list[dict[str, Any]] = []
    monkeypatch.setattr(
        pipeline, "continue_job", lambda job_id: handed.append({CONTINUE_KEY: {"job_id": job_id}})
    )
    event = {"detail-type": "Job Finished", "source": "shardq", "detail": {"job_id": a}}
    # WHEN the pipeline Lambda handles its Job Finished event with 1 s left in its invocation
    answer = pipeline.handler(event, LambdaContext(remaining_ms=1_000))
    # THEN both start; the big one stops at its first checkpoint and is handed on, the small one
    # (after it, in id order) is still enqueued whole by the same invocation
    assert answer == {"upstream": a, "followers": {big: "RUNNING", small: "RUNNING"}}
    assert handed == [{CONTINUE_KEY: {"job_id": big}}]
    assert engine.store.get_job(big).enqueued(0, "train") == 500
    assert engine.store.get_job(small).enqueued(0, "train") == 2
    # WHEN the continuation runs, and then the event is delivered again (EventBridge: at least once)
    view = splitter.split(handed[0], LambdaContext())
    assert view["ok"] and view["continued"] and view["status"] == "RUNNING"
    assert pipeline.handler(event, LambdaContext())["followers"] == {big: "RUNNING", small: "RUNNING"}
    # THEN every task of both is on the queue exactly once, from the training's final model
    tasks = tasks_of(receive_all(engine.sqs, engine.settings.task_queue_url))
    by_job: dict[str, list[int]] = {}
    for t in tasks:
        by_job.setdefault(t.job_id, []).append(t.shard_id)
    assert sorted(by_job[big]) == list(range(1_100))
    assert sorted(by_job[small]) == [0, 1]
    assert len(tasks) == 1_102
    final = manifest(engine, a)["final_model_uri"]
    assert {t.init_model_uri for t in tasks} == {final}
    assert engine.store.get_job(big).model_uri == final
    assert len(handed) == 1
