"""A cancelled job's finished time is the cancel, not its last recorded result."""

from __future__ import annotations

import json
import time
from typing import Any

from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.operations import cancel
from shardq.core.settings import Settings
from tests.helpers import receive_all, result_for, tasks_of


def manifest_of(s3: Any, result_uri: str) -> dict[str, Any]:
    bucket, key = result_uri.removeprefix("s3://").split("/", 1)
    return dict(json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))


def test_a_cancelled_job_finished_when_it_was_cancelled(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a 3-shard map job with one result recorded
    engine.submit(
        {"job_id": "c", "kind": "map", "dataset": {"num_samples": 30}, "sharding": {"shard_count": 3}}
    )
    tasks = tasks_of(receive_all(clients["sqs"], settings.task_queue_url))
    engine.ingest([Outcome(result_for(tasks[0]))])
    recorded = engine.store.results("c", 0)[0].recorded_at
    # (timestamps have millisecond resolution: let the cancel come at a later one)
    time.sleep(0.01)
    # WHEN the operator cancels it
    assert cancel(engine, "c").cancelled
    job = engine.store.get_job("c")
    # THEN the record and the manifest say it finished at the cancel, after the last result
    assert job.status == "CANCELLED" and job.cancel_requested_at is not None
    assert job.finished_at == job.cancel_requested_at > recorded
    assert job.result_uri is not None
    assert manifest_of(clients["s3"], job.result_uri)["finished_at"] == job.cancel_requested_at


def test_a_result_recorded_after_the_cancel_ends_the_job_later(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a job whose cancel was requested while a task still ran, and that task's result after it
    engine.submit(
        {"job_id": "d", "kind": "map", "dataset": {"num_samples": 20}, "sharding": {"shard_count": 2}}
    )
    tasks = tasks_of(receive_all(clients["sqs"], settings.task_queue_url))
    engine.store.request_cancel("d")
    requested = engine.store.get_job("d").cancel_requested_at
    assert requested is not None
    time.sleep(0.01)
    engine.ingest([Outcome(result_for(tasks[0]))])
    # WHEN the cancel is finished
    assert engine.advance("d") == "CANCELLED"
    job = engine.store.get_job("d")
    # THEN the job ended with that result, the latest thing that happened to it
    rows = engine.store.results("d", 0)
    assert rows and job.finished_at == max(r.recorded_at for r in rows) > requested


def test_an_outcome_after_the_job_ended_is_late_and_uncounted(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a 3-shard map job with no failure budget, failed by its first failed shard
    engine.submit(
        {
            "job_id": "e",
            "kind": "map",
            "dataset": {"num_samples": 30},
            "sharding": {"shard_count": 3},
            "max_failed_shards": 0,
        }
    )
    tasks = tasks_of(receive_all(clients["sqs"], settings.task_queue_url))
    engine.ingest([Outcome(result_for(tasks[0], status="failed"))])
    engine.advance("e")
    ended = engine.store.get_job("e")
    assert ended.status == "FAILED" and ended.result_uri is not None
    # WHEN a task that was still running reports its own failure, and another its success
    out = engine.ingest([Outcome(result_for(tasks[1], status="failed")), Outcome(result_for(tasks[2]))])
    # THEN both are kept apart as late: the counters, the status and the manifest still agree
    job = engine.store.get_job("e")
    assert job.status == "FAILED"
    assert job.view().failed == ended.view().failed == 1
    assert job.view().done == ended.view().done == 0
    assert len(manifest_of(clients["s3"], job.result_uri)["failed"]) == 1
    assert out is not None
