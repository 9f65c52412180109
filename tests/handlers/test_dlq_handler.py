"""DLQ handler: a task that dies after maxReceiveCount fails its shard on the job, body kept for retry."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lambdas import dlq_handler
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.settings import Settings
from shardq.local.resources import dlq_urls
from tests.helpers import LambdaContext, body_event, receive_all, result_for, run_event_source, tasks_of


def kill_task_until_dead_lettered(sqs: Any, url: str, shard_id: int, max_receives: int) -> None:
    """A worker that receives the shard and crashes, max_receives times (visibility given back each time)."""
    receives = 0
    for _ in range(200):
        msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"]).get(
            "Messages", []
        )
        for m in msgs:
            body = json.loads(m["Body"])
            if body["shard_id"] == shard_id:
                receives += 1
                sqs.change_message_visibility(
                    QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0
                )
            else:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        if receives >= max_receives and not msgs:
            return
    raise AssertionError(f"shard {shard_id} was received {receives} times and never dead-lettered")


@pytest.mark.parametrize(("budget", "status"), [(0, "FAILED"), (1, "SUCCEEDED")])
def test_dead_task_fails_its_shard_and_the_budget_decides(
    lambda_env: Settings, engine: Engine, clients: dict[str, Any], budget: int, status: str
) -> None:
    # GIVEN a map job whose shard 1 crashes its worker on every receive
    sqs = clients["sqs"]
    engine.submit(
        {
            "job_id": "poison",
            "kind": "map",
            "dataset": {"num_samples": 30},
            "sharding": {"shard_count": 3},
            "max_failed_shards": budget,
        }
    )
    kill_task_until_dead_lettered(sqs, lambda_env.task_queue_url, 1, lambda_env.max_receive_count)
    # the other shards were deleted unprocessed above; report them as done
    engine.ingest([Outcome(result_for(t)) for t in _planned(engine, "poison") if t.shard_id != 1])
    # WHEN the real redrive has moved the task to the FIFO DLQ and the DLQ handler consumes it
    dlq = dlq_urls(sqs, lambda_env)["tasks"]
    responses = run_event_source(sqs, dlq, dlq_handler.handler)
    # THEN shard 1 is recorded failed with its receive count and body, and the budget decides the job
    assert responses == [{"batchItemFailures": []}]
    rows = engine.store.results("poison", 0)
    dead = next(r for r in rows if r.result.shard_id == 1)
    assert dead.source == "dlq"
    assert dead.result.status == "failed"
    assert dead.receive_count >= lambda_env.max_receive_count
    assert json.loads(dead.task_body or "{}")["shard_id"] == 1
    assert "maxReceiveCount=5" in dead.result.error
    assert engine.status("poison").status == status
    assert receive_all(sqs, dlq) == []


def _planned(engine: Engine, job_id: str) -> list[Any]:
    from shardq.core import planning

    job = engine.store.get_job(job_id)
    request = job.request
    layout = planning.Layout(engine.settings.artifact_bucket, job_id)
    return [planning.train_task(request, job_id, layout, 0, i, None) for i in range(request.task_count)]


def test_malformed_dead_task_blocks_only_its_group(
    lambda_env: Settings, engine: Engine, clients: dict[str, Any]
) -> None:
    engine.submit(
        {"job_id": "j", "kind": "map", "dataset": {"num_samples": 4}, "sharding": {"shard_count": 2}}
    )
    tasks = tasks_of(receive_all(clients["sqs"], lambda_env.task_queue_url))
    event = body_event(["{broken", tasks[0].to_json()], "arn:aws:sqs:us-east-1:000000000000:tasks-dlq.fifo")
    event["Records"][0]["attributes"]["MessageGroupId"] = "other:0"
    event["Records"][1]["attributes"]["MessageGroupId"] = "j:0"
    response = dlq_handler.handler(event, LambdaContext())
    assert response == {"batchItemFailures": [{"itemIdentifier": "m-0"}]}
    assert engine.store.get_job("j").failed(0, "train") == 1
