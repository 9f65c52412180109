"""Tasks too big for an SQS message travel by claim check, end to end, on the local endpoint."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shardq.core import artifacts, planning
from shardq.core.contracts import ShardResult, ShardTask
from shardq.core.engine import Engine
from shardq.core.enqueue import INLINE_TASK_MAX_BYTES, load_task
from shardq.core.jobstore import Outcome
from shardq.core.settings import Settings
from shardq.worker.runtime import Worker
from tests.helpers import TRUSTED, CutShort, receive_all

FILES_PER_SHARD = 1_200


def big_request(job_id: str = "big-tasks") -> dict[str, Any]:
    """Two shards of 1,200 long file names each: ~90 KB a task, over the inline limit."""
    files = [f"s3://data/corpus/{'x' * 50}/part-{i:06d}.parquet" for i in range(2 * FILES_PER_SHARD)]
    return {
        "job_id": job_id,
        "kind": "map",
        "dataset": {"files": files},
        "sharding": {"shard_count": 2},
        "entrypoint": "tests.workloads:count_files",
    }


def test_big_tasks_travel_as_small_envelopes_with_the_body_in_s3(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a request whose every task body is far over the inline limit
    payload = big_request()
    # WHEN it is submitted
    answer = engine.submit(payload)
    # THEN the job runs, and each message is an envelope naming its body in the artifact bucket
    assert answer["status"] == "RUNNING"
    msgs = receive_all(clients["sqs"], settings.task_queue_url, delete=False)
    assert len(msgs) == 2
    request = engine.store.get_job("big-tasks").request
    layout = planning.Layout(settings.artifact_bucket, "big-tasks")
    for m in msgs:
        assert len(m["Body"].encode()) < 4_096
        envelope = ShardTask.from_json(m["Body"])
        assert envelope.payload_uri == f"s3://{settings.artifact_bucket}/" + layout.task_payload_key(
            0, "train", envelope.shard_id
        )
        assert envelope.data == {}
        full = load_task(envelope, clients["s3"])
        assert full == planning.train_task(request, "big-tasks", layout, 0, envelope.shard_id, None)
        assert len(full.to_json().encode()) > INLINE_TASK_MAX_BYTES
        assert m["Attributes"]["MessageDeduplicationId"] == full.key


def test_a_claim_check_body_cut_short_is_read_again(
    engine: Engine, settings: Settings, clients: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a claim-checked task, and a client whose first two GetObject streams end early
    monkeypatch.setattr(artifacts, "DOWNLOAD_BACKOFF_S", 0.0)
    engine.submit(big_request("big-cut"))
    envelope = ShardTask.from_json(receive_all(clients["sqs"], settings.task_queue_url)[0]["Body"])
    cut = CutShort(clients["s3"], cuts=2)
    # WHEN the worker loads its body, THEN it is read a third time and is the whole task (a network
    # blip costs no attempt of the task)
    full = load_task(envelope, cut)
    assert cut.counts["get_object"] == 3
    assert len(full.data["files"]) == FILES_PER_SHARD and full.key == envelope.key


def test_a_worker_runs_a_claim_checked_task_and_the_job_finishes(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a job of claim-checked tasks
    engine.submit(big_request("big-run"))
    worker = Worker(
        allow=TRUSTED,
        sqs=clients["sqs"],
        s3=clients["s3"],
        ddb=clients["dynamodb"],
        job_table=settings.job_table,
        task_queue_url=settings.task_queue_url,
        results_queue_url=settings.results_queue_url,
        wait_s=1,
    )
    # WHEN a real worker takes both tasks and the results are ingested
    assert worker.poll_once() and worker.poll_once()
    results = [
        ShardResult.from_json(m["Body"]) for m in receive_all(clients["sqs"], settings.results_queue_url)
    ]
    assert engine.ingest([Outcome(r) for r in results]) == []
    # THEN the training function saw every file of its shard, and the job succeeded
    assert sorted((r.shard_id, r.num_samples) for r in results) == [
        (0, FILES_PER_SHARD),
        (1, FILES_PER_SHARD),
    ]
    job = engine.store.get_job("big-run")
    assert job.status == "SUCCEEDED"
    bucket, key = planning.split_s3(job.result_uri or "")
    manifest = json.loads(clients["s3"].get_object(Bucket=bucket, Key=key)["Body"].read())
    assert manifest["metrics"]["files"]["mean"] == FILES_PER_SHARD


def test_small_tasks_stay_inline(engine: Engine, settings: Settings, clients: dict[str, Any]) -> None:
    engine.submit({**big_request("small"), "dataset": {"files": ["a", "b"]}})
    bodies = [ShardTask.from_json(m["Body"]) for m in receive_all(clients["sqs"], settings.task_queue_url)]
    assert [t.payload_uri for t in bodies] == [None, None]
    assert sorted(t.data["files"][0] for t in bodies) == ["a", "b"]
