"""Aggregator with real SQS event shapes on the local endpoint: exactly-once counting, rounds, finishing."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from lambdas import aggregator
from shardq.core.contracts import ShardResult
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.settings import Settings
from tests.helpers import (
    CountingClient,
    LambdaContext,
    body_event,
    receive_all,
    result_for,
    results_event,
    run_event_source,
    tasks_of,
    work_tasks,
)


def submit(engine: Engine, job_id: str = "dp", **extra: Any) -> None:
    engine.submit(
        {
            "job_id": job_id,
            "kind": "data_parallel",
            "dataset": {"uri": "s3://d", "num_samples": 1_000},
            "sharding": {"shard_count": 4},
            "max_parallel": 2,
            **extra,
        }
    )


def manifest(clients: dict[str, Any], settings: Settings, job_id: str) -> dict[str, Any]:
    body = clients["s3"].get_object(Bucket=settings.artifact_bucket, Key=f"jobs/{job_id}/result.json")["Body"]
    return json.loads(body.read())


def test_data_parallel_three_rounds_by_four_shards_succeeds(
    lambda_env: Settings, engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN a 3-round, 4-shard data_parallel job
    submit(engine, rounds=3)
    sqs = clients["sqs"]
    # WHEN workers answer every task and the aggregator consumes the results queue
    done = 0
    for _ in range(10):
        n = work_tasks(sqs, lambda_env)
        if not n:
            break
        done += n
        run_event_source(sqs, lambda_env.results_queue_url, aggregator.handler, batch=100)
    # THEN 3 × (4 train + 1 reduce) tasks ran and the job succeeded with the last round's model
    assert done == 15
    view = engine.status("dp")
    assert view.status == "SUCCEEDED"
    assert view.result_uri == f"s3://{lambda_env.artifact_bucket}/jobs/dp/result.json"
    m = manifest(clients, lambda_env, "dp")
    assert m["final_model_uri"] == f"s3://{lambda_env.artifact_bucket}/jobs/dp/round-0002/reduce/model.npz"
    assert [r["round"] for r in m["rounds"]] == [0, 1, 2]
    # round metrics are the num_samples-weighted mean of exactly the recorded results
    r1 = m["rounds"][1]
    losses = [1 / (1 + s + 1) for s in range(4)]
    assert r1["metrics"]["loss"]["mean"] == pytest.approx(sum(losses) / 4)  # equal 250-sample shards
    assert r1["num_samples"] == 1_000
    inputs = json.loads(
        clients["s3"]
        .get_object(Bucket=lambda_env.artifact_bucket, Key="jobs/dp/round-0001/reduce-inputs.json")["Body"]
        .read()
    )
    assert [x["shard_id"] for x in inputs["models"]] == [0, 1, 2, 3]
    assert inputs["total_samples"] == 1_000


def test_round_two_tasks_start_from_round_one_model(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    submit(engine, rounds=2)
    sqs = clients["sqs"]
    round0 = tasks_of(receive_all(sqs, settings.task_queue_url))
    engine.ingest([Outcome(result_for(t)) for t in round0])
    reduce = tasks_of(receive_all(sqs, settings.task_queue_url))
    assert [(t.task_type, t.round) for t in reduce] == [("reduce", 0)]
    engine.ingest([Outcome(result_for(reduce[0]))])
    round1 = tasks_of(receive_all(sqs, settings.task_queue_url))
    assert {t.init_model_uri for t in round1} == {reduce[0].output_prefix + "model.npz"}
    assert sorted(t.shard_id for t in round1) == [0, 1, 2, 3]


def test_duplicate_results_are_counted_once(
    lambda_env: Settings, engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN a job whose shard 0 result arrives three times: twice in one batch, once later
    submit(engine)
    tasks = tasks_of(receive_all(clients["sqs"], lambda_env.task_queue_url))
    r0 = result_for(tasks[0])
    first = aggregator.handler(results_event([r0, r0]), LambdaContext())
    second = aggregator.handler(results_event([r0]), LambdaContext())
    # THEN every record succeeds (duplicates are dropped, not retried) and the counter says 1
    assert first == {"batchItemFailures": []}
    assert second == {"batchItemFailures": []}
    job = engine.store.get_job("dp")
    assert job.ok(0, "train") == 1
    assert len(engine.store.results("dp", 0)) == 1


def test_results_out_of_order_still_complete_the_round(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    submit(engine)
    tasks = tasks_of(receive_all(clients["sqs"], settings.task_queue_url))
    for t in reversed(tasks):
        engine.ingest([Outcome(result_for(t))])
    assert [t.task_type for t in tasks_of(receive_all(clients["sqs"], settings.task_queue_url))] == ["reduce"]


def test_malformed_result_alone_is_reported_failed(
    lambda_env: Settings, engine: Engine, clients: dict[str, Any]
) -> None:
    submit(engine)
    tasks = tasks_of(receive_all(clients["sqs"], lambda_env.task_queue_url))
    good = [result_for(t).to_json() for t in tasks[:2]]
    event = body_event([good[0], '{"job_id": "dp", "round": "zero"}', "not json", good[1]])
    response = aggregator.handler(event, LambdaContext())
    assert response == {"batchItemFailures": [{"itemIdentifier": "m-1"}, {"itemIdentifier": "m-2"}]}
    assert engine.store.get_job("dp").ok(0, "train") == 2


def test_result_for_unknown_job_is_kept_for_retry_and_dlq(
    lambda_env: Settings, engine: Engine, clients: dict[str, Any]
) -> None:
    submit(engine)
    tasks = tasks_of(receive_all(clients["sqs"], lambda_env.task_queue_url))
    stray = ShardResult(job_id="ghost", round=0, shard_id=0, task_type="train", status="succeeded")
    event = results_event([result_for(tasks[0]), stray])
    assert aggregator.handler(event, LambdaContext()) == {"batchItemFailures": [{"itemIdentifier": "m-1"}]}


def test_two_aggregators_racing_on_last_shards_finalize_once(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a map job with 3 of 5 shards recorded, and the event bus watched
    engine.submit(
        {
            "job_id": "race",
            "kind": "map",
            "dataset": {"num_samples": 50},
            "sharding": {"shard_count": 5},
        }
    )
    tasks = tasks_of(receive_all(clients["sqs"], settings.task_queue_url))
    engine.ingest([Outcome(result_for(t)) for t in tasks[:3]])
    events = CountingClient(clients["events"])
    racers = [
        Engine(
            settings=settings, ddb=clients["dynamodb"], sqs=clients["sqs"], s3=clients["s3"], events=events
        )
        for _ in range(2)
    ]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def finish(e: Engine, task_index: int) -> None:
        try:
            barrier.wait()
            e.ingest([Outcome(result_for(tasks[task_index]))])
        except BaseException as exc:
            errors.append(exc)

    # WHEN two aggregators record the last two shards at the same moment
    threads = [threading.Thread(target=finish, args=(e, 3 + i)) for i, e in enumerate(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # THEN the job finished once and exactly one Job Finished event went out
    assert errors == []
    job = engine.store.get_job("race")
    assert job.status == "SUCCEEDED"
    assert not job.event_pending
    assert events.counts.get("put_events", 0) == 1


def test_sweep_picks_best_trial_with_full_leaderboard(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    engine.submit(
        {
            "job_id": "sweep",
            "kind": "sweep",
            "dataset": {"num_samples": 100},
            "search_space": {"lr": [0.3, 0.1, 0.03], "epochs": [1, 4]},
            "objective": {"metric": "val_loss", "direction": "minimize"},
        }
    )
    tasks = tasks_of(receive_all(clients["sqs"], settings.task_queue_url))

    def trained(t: Any) -> ShardResult:
        # a loss surface with its minimum at lr=0.1, epochs=4
        h = t.hyperparameters
        loss = abs(h["lr"] - 0.1) + 1.0 / h["epochs"]
        return ShardResult(
            job_id=t.job_id,
            round=0,
            shard_id=t.shard_id,
            task_type="train",
            status="succeeded",
            metrics={"val_loss": loss},
            num_samples=100,
            artifact_uri=t.output_prefix + "model.npz",
        )

    engine.ingest([Outcome(trained(t)) for t in tasks])
    assert engine.status("sweep").status == "SUCCEEDED"
    m = manifest(clients, settings, "sweep")
    assert m["best"]["hyperparameters"] == {"lr": 0.1, "epochs": 4}
    assert len(m["leaderboard"]) == 6
    values = [row["objective"] for row in m["leaderboard"]]
    assert values == sorted(values)


def test_failure_budget_exceeded_fails_the_job(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    submit(engine, max_failed_shards=1)
    tasks = tasks_of(receive_all(clients["sqs"], settings.task_queue_url))
    engine.ingest([Outcome(result_for(tasks[0], status="failed"))])
    assert engine.status("dp").status == "RUNNING"  # within budget
    engine.ingest([Outcome(result_for(tasks[1], status="failed"))])
    view = engine.status("dp")
    assert view.status == "FAILED"
    assert "2 shards failed, over max_failed_shards=1" in (view.error or "")
    m = manifest(clients, settings, "dp")
    assert sorted(f["shard_id"] for f in m["failed"]) == [0, 1]


def test_failed_shard_within_budget_succeeds_with_failure_listed(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    engine.submit(
        {
            "job_id": "m",
            "kind": "map",
            "dataset": {"num_samples": 40},
            "sharding": {"shard_count": 4},
            "max_failed_shards": 1,
        }
    )
    tasks = tasks_of(receive_all(clients["sqs"], settings.task_queue_url))
    engine.ingest(
        [Outcome(result_for(t, status="failed" if t.shard_id == 2 else "succeeded")) for t in tasks]
    )
    assert engine.status("m").status == "SUCCEEDED"
    m = manifest(clients, settings, "m")
    assert [f["shard_id"] for f in m["failed"]] == [2]
    assert [o["shard_id"] for o in m["outputs"]] == [0, 1, 3]
    assert m["metrics"]["loss"]["count"] == 3


def test_failed_reduce_fails_the_job(engine: Engine, settings: Settings, clients: dict[str, Any]) -> None:
    submit(engine, rounds=2)
    engine.ingest(
        [Outcome(result_for(t)) for t in tasks_of(receive_all(clients["sqs"], settings.task_queue_url))]
    )
    reduce = tasks_of(receive_all(clients["sqs"], settings.task_queue_url))[0]
    engine.ingest([Outcome(result_for(reduce, status="failed"))])
    view = engine.status("dp")
    assert view.status == "FAILED"
    assert "reduce of round 0 failed: reduce blew up" in (view.error or "")


def test_late_results_after_finish_change_nothing(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    engine.submit(
        {"job_id": "m", "kind": "map", "dataset": {"num_samples": 4}, "sharding": {"shard_count": 2}}
    )
    tasks = tasks_of(receive_all(clients["sqs"], settings.task_queue_url))
    engine.ingest([Outcome(result_for(t)) for t in tasks])
    before = engine.store.get_job("m")
    assert engine.ingest([Outcome(result_for(tasks[0], loss=9.9))]) == []
    after = engine.store.get_job("m")
    assert after.ok(0, "train") == before.ok(0, "train") == 2
    assert after.status == "SUCCEEDED"


def test_next_round_too_big_for_one_invocation_is_handed_on(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a 2-round job of 1,200 shards whose reduce result arrives with little time left
    engine.submit(
        {
            "job_id": "big",
            "kind": "data_parallel",
            "dataset": {"num_samples": 1_200},
            "sharding": {"shard_count": 1_200},
            "rounds": 2,
        }
    )
    sqs = clients["sqs"]
    engine.ingest([Outcome(result_for(t)) for t in tasks_of(receive_all(sqs, settings.task_queue_url))])
    reduce = tasks_of(receive_all(sqs, settings.task_queue_url))[0]
    handed: list[str] = []
    # WHEN the aggregator's deadline cuts the round-1 fan-out short
    failed = engine.ingest([Outcome(result_for(reduce))], deadline=engine.clock() + 1, hand_on=handed.append)
    # THEN the result is recorded (not failed), the job is handed on, and the continuation finishes it
    assert failed == []
    assert handed == ["big"]
    assert engine.store.get_job("big").round == 0
    engine.resume("big")
    job = engine.store.get_job("big")
    assert (job.round, job.phase, job.enqueued(1, "train")) == (1, "train", 1_200)
    assert len(receive_all(sqs, settings.task_queue_url)) == 1_200


def test_cancel_racing_the_last_result_leaves_a_manifest_matching_the_job(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a job cancelled while its last result was being finalized (the cancel won the transition)
    engine.submit(
        {"job_id": "m", "kind": "map", "dataset": {"num_samples": 4}, "sharding": {"shard_count": 2}}
    )
    tasks = tasks_of(receive_all(clients["sqs"], settings.task_queue_url))
    engine.ingest([Outcome(result_for(tasks[0]))])
    job = engine.store.get_job("m")
    engine.finalize(job, "CANCELLED", "cancelled by test")
    engine.store.record([Outcome(result_for(tasks[1]))])
    # WHEN the aggregator's finalize runs late and loses the transition
    status = engine.finalize(engine.store.get_job("m"), "SUCCEEDED")
    # THEN the job stays CANCELLED and so does its manifest
    assert status == "CANCELLED"
    assert manifest(clients, settings, "m")["status"] == "CANCELLED"
