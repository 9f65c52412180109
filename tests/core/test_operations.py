"""Operator actions against the local endpoint: a retry revives a job that failed mid-round."""

from __future__ import annotations

from typing import Any

from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.operations import retry_failed
from shardq.core.settings import Settings
from tests.helpers import receive_all, result_for, tasks_of


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
