"""Operator actions against the local endpoint: a retry revives a job that failed mid-round."""

from __future__ import annotations

from typing import Any

from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.operations import RETRY_CHUNK, retry_failed
from shardq.core.settings import Settings
from tests.helpers import receive_all, result_for, tasks_of
from tests.requests import make_request


def test_retry_of_a_job_failed_mid_round_resends_failed_and_unrun_shards(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a 4-shard job with no failure budget whose shard 0 failed first: the job FAILED at
    # once, and the workers then dropped shards 1-3 unrun (they skip finished jobs' tasks)
    engine.submit(
        {"job_id": "f", "kind": "map", "dataset": {"num_samples": 40}, "sharding": {"shard_count": 4}}
    )
    tasks = {t.shard_id: t for t in tasks_of(receive_all(clients["sqs"], settings.task_queue_url))}
    engine.ingest([Outcome(result_for(tasks[0], status="failed"))])
    assert engine.status("f").status == "FAILED"
    # WHEN the operator retries it
    report = retry_failed(engine, "f")
    # THEN the failed shard and the three that never ran are back on the queue, and finishing
    # them completes the job
    assert report.retried == [0, 1, 2, 3]
    again = tasks_of(receive_all(clients["sqs"], settings.task_queue_url))
    assert sorted(t.shard_id for t in again) == [0, 1, 2, 3]
    engine.ingest([Outcome(result_for(t)) for t in again])
    view = engine.status("f")
    assert (view.status, view.done, view.failed) == ("SUCCEEDED", 4, 0)


def test_a_retry_that_crashed_after_forgetting_is_finished_by_the_next_one(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a 250-shard map job whose 230 failures made it FAILED (more than two retry chunks)
    engine.submit(make_request("map", job_id="big", shards=250, num_samples=2500, max_failed_shards=200))
    tasks = tasks_of(receive_all(clients["sqs"], settings.task_queue_url))
    engine.ingest(
        [Outcome(result_for(t, status="failed" if t.shard_id < 230 else "succeeded")) for t in tasks]
    )
    assert engine.status("big").status == "FAILED"
    # WHEN a retry crashes after forgetting the failures, before sending a task (its first steps alone)
    generation = engine.store.next_retry_generation("big", "FAILED")
    job = engine.store.get_job("big")
    for first in range(0, 230, RETRY_CHUNK):
        engine.store.forget_failures(job, list(range(first, min(first + RETRY_CHUNK, 230))), generation)
    # THEN the forgotten shards wait in pending items (one per chunk), none on the job record
    assert engine.store.retry_pending("big") == frozenset(range(230))
    assert (
        "retry_pending"
        not in clients["dynamodb"].get_item(
            TableName=settings.job_table, Key={"pk": {"S": "JOB#big"}, "sk": {"S": "JOB"}}
        )["Item"]
    )
    assert receive_all(clients["sqs"], settings.task_queue_url) == []
    # WHEN the operator runs the retry again
    report = retry_failed(engine, "big")
    # THEN every forgotten shard goes back on the queue once, the pending items are gone, and the
    # job finishes when they succeed
    assert report.retried == list(range(230)) and engine.store.retry_pending("big") == frozenset()
    again = tasks_of(receive_all(clients["sqs"], settings.task_queue_url))
    assert sorted(t.shard_id for t in again) == list(range(230))
    engine.ingest([Outcome(result_for(t)) for t in again])
    view = engine.status("big")
    assert (view.status, view.done, view.failed) == ("SUCCEEDED", 250, 0)


def test_a_retry_after_a_cancel_that_lost_to_a_failure_is_not_cancelled_again(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a job an operator asked to cancel just as its failure ended it FAILED (the failing
    # aggregator had read the job before the mark)
    engine.submit(make_request("map", job_id="raced", shards=2))
    tasks = {t.shard_id: t for t in tasks_of(receive_all(clients["sqs"], settings.task_queue_url))}
    engine.store.record([Outcome(result_for(tasks[0], status="failed"))])
    job = engine.store.get_job("raced")
    assert engine.store.request_cancel("raced")
    assert engine.finalize(job, "FAILED", "1 shards failed") == "FAILED"
    # WHEN the operator then retries it
    retry_failed(engine, "raced")
    # THEN the retry, asked for last, wins: the job runs again, unmarked, and finishes
    job = engine.store.get_job("raced")
    assert (job.status, job.cancel_requested_at) == ("RUNNING", None)
    engine.ingest(
        [Outcome(result_for(t)) for t in tasks_of(receive_all(clients["sqs"], settings.task_queue_url))]
    )
    assert engine.status("raced").status == "SUCCEEDED"
