"""Splitter on the local endpoint: exact fan-out, idempotent submits, clean rejections, resumption."""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

import pytest

from lambdas import splitter
from shardq.core.contracts import ValidationError
from shardq.core.engine import Engine, EnqueueIncomplete, JobConflict
from shardq.core.fanout import FanOutError
from shardq.core.jobstore import JobNotFound
from shardq.core.settings import Settings
from tests.helpers import CountingClient, FlakySQS, LambdaContext, count_messages, receive_all, tasks_of
from tests.requests import make_request

# The shared builder with this module's defaults: 25 shards of 10,000 samples in 4 lanes.
request = functools.partial(make_request, job_id="job-a", shards=25, num_samples=10_000, max_parallel=4)


def table_items(clients: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    return clients["dynamodb"].scan(TableName=settings.job_table)["Items"]


def test_request_becomes_one_task_per_shard_across_lanes(
    lambda_env: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a 25-shard request with 4 lanes
    # WHEN the splitter handler is invoked the way `aws lambda invoke` does
    answer = splitter.handler(request(), LambdaContext())
    # THEN it answers with the job, and the queue holds exactly 25 distinct tasks in 4 groups
    assert answer == {
        "ok": True,
        "job_id": "job-a",
        "status": "RUNNING",
        "shards": 25,
        "rounds": 1,
        "created": True,
    }
    msgs = receive_all(clients["sqs"], lambda_env.task_queue_url)
    tasks = tasks_of(msgs)
    assert sorted(t.shard_id for t in tasks) == list(range(25))
    assert len({m["Body"] for m in msgs}) == 25
    assert {m["Attributes"]["MessageGroupId"] for m in msgs} == {f"job-a:r0:{lane}" for lane in range(4)}
    assert {m["Attributes"]["MessageDeduplicationId"] for m in msgs} == {
        f"job-a:0:{i}:train" for i in range(25)
    }
    covered = sorted((t.data["start"], t.data["end"]) for t in tasks)
    assert covered[0][0] == 0
    assert covered[-1][1] == 10_000


def test_same_request_twice_is_one_job(engine: Engine, settings: Settings, clients: dict[str, Any]) -> None:
    first = engine.submit(request())
    second = engine.submit(request())
    assert first["created"] is True
    assert second["created"] is False
    assert second["job_id"] == first["job_id"]
    assert count_messages(clients["sqs"], settings.task_queue_url) == 25


def test_same_job_id_with_another_request_is_refused(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    engine.submit(request())
    with pytest.raises(JobConflict, match="job_id 'job-a' was already submitted with a different request"):
        engine.submit(request(shards=5))
    assert count_messages(clients["sqs"], settings.task_queue_url) == 25


def test_invalid_request_creates_nothing(lambda_env: Settings, clients: dict[str, Any]) -> None:
    answer = splitter.handler(request(shards=0, rounds=0), LambdaContext())
    assert answer["ok"] is False
    assert answer["error"] == "ValidationError"
    assert "sharding.shard_count must be between 1 and 1000000, got 0" in answer["problems"]
    assert "rounds must be between 1 and 1000, got 0" in answer["problems"]
    assert table_items(clients, lambda_env) == []
    assert count_messages(clients["sqs"], lambda_env.task_queue_url) == 0


def test_splitter_killed_half_way_and_reinvoked_enqueues_exactly_n(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a 1,200-shard job whose splitter dies after 65 SendMessageBatch calls (650 tasks)
    n = 1_200
    engine.fanout.sqs = FlakySQS(clients["sqs"], die_after=65)
    with pytest.raises(FanOutError):
        engine.submit(request(shards=n))
    cursor = engine.store.get_job("job-a").enqueued(0, "train")
    assert 0 < cursor < n
    # WHEN the same request is submitted again (a retry) with a healthy client
    engine.fanout.sqs = clients["sqs"]
    again = engine.submit(request(shards=n))
    # THEN the job resumes from its cursor and the queue holds exactly N distinct tasks
    assert again["created"] is False
    msgs = receive_all(clients["sqs"], settings.task_queue_url)
    assert len(msgs) == n
    assert sorted(t.shard_id for t in tasks_of(msgs)) == list(range(n))
    assert engine.store.get_job("job-a").enqueued(0, "train") == n


def test_deadline_hands_the_rest_on_and_resume_finishes(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a clock that says the invocation is about to time out after the first chunk
    with pytest.raises(EnqueueIncomplete) as info:
        engine.submit(request(shards=1_100), deadline=engine.clock() + 1)
    assert info.value.done == 500
    # WHEN the continuation runs
    view = engine.resume("job-a")
    # THEN every task is queued once
    assert view["status"] == "RUNNING"
    assert count_messages(clients["sqs"], settings.task_queue_url) == 1_100


def test_fan_out_costs_at_most_011_sqs_calls_per_task(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    counting = CountingClient(clients["sqs"])
    engine.fanout.sqs = counting
    engine.submit(request(shards=2_000))
    assert counting.counts == {"send_message_batch": 200}
    assert counting.counts["send_message_batch"] / 2_000 <= 0.11


def test_sweep_request_enqueues_one_task_per_trial(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    payload = {
        "job_id": "sweep-1",
        "kind": "sweep",
        "dataset": {"uri": "s3://d", "num_samples": 100},
        "search_space": {"lr": [0.1, 0.01, 0.001], "batch": [16, 32]},
        "objective": {"metric": "val_loss"},
    }
    assert engine.submit(payload)["shards"] == 6
    hypers = sorted(
        (t.hyperparameters["lr"], t.hyperparameters["batch"])
        for t in tasks_of(receive_all(clients["sqs"], settings.task_queue_url))
    )
    assert hypers == sorted((lr, b) for lr in (0.1, 0.01, 0.001) for b in (16, 32))


def test_continuation_event_resumes_by_job_id(lambda_env: Settings, clients: dict[str, Any]) -> None:
    with pytest.raises(JobNotFound):
        splitter.handler({"shardq_continue": {"job_id": "nope"}}, LambdaContext())
    splitter.handler(request(shards=3), LambdaContext())
    answer = splitter.handler({"shardq_continue": {"job_id": "job-a"}}, LambdaContext())
    assert answer["continued"] is True
    assert count_messages(clients["sqs"], lambda_env.task_queue_url) == 3


def test_data_outside_the_readable_buckets_is_refused_at_submit(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a stack whose workers may read the artifact bucket and one dataset bucket
    engine.settings = replace(settings, data_buckets=(settings.artifact_bucket, "team-datasets"))
    bad = request(
        dataset={"files": ["s3://team-datasets/a.parquet", "s3://someone-else/b.parquet"]},
        sharding={"shard_count": 2},
        model={"init_uri": "s3://elsewhere/model.pt"},
    )
    # WHEN a request names data in other buckets
    with pytest.raises(ValidationError) as info:
        engine.submit(bad)
    # THEN each such field is named with the fix, and nothing is created
    problems = "\n".join(info.value.problems)
    assert "dataset.files[1] 's3://someone-else/b.parquet' is in bucket 'someone-else'" in problems
    assert "model.init_uri 's3://elsewhere/model.pt'" in problems
    assert "dataset_bucket_arns" in problems
    assert "dataset.files[0]" not in problems
    assert table_items(clients, settings) == []
    assert count_messages(clients["sqs"], settings.task_queue_url) == 0
    # ... while data in a readable bucket, or not on S3 at all, is accepted
    readable = {"uri": "s3://team-datasets/x", "num_samples": 10_000}
    assert engine.submit(request(job_id="ok-1", dataset=readable))["created"] is True
    assert (
        engine.submit(
            request(
                job_id="ok-2",
                dataset={"uri": "synthetic://linear", "num_samples": 100},
                sharding={"shard_count": 2},
            )
        )["created"]
        is True
    )
