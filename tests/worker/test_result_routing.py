"""The worker sends each result to the queue the route rule names (shardq.core.result_routes).

Real queues on the local cloud: a fast results queue beside the provisioned bulk one, a real job
(engine) whose tasks a real ``Worker`` runs, and the queues read back to see which carried what.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.messages import ShardResult
from shardq.core.result_routes import FAST_ROUTE_MAX_TASKS, OFF
from shardq.core.settings import Settings
from shardq.worker.runtime import Worker
from tests.helpers import TRUSTED, receive_all


def submit(engine: Engine, job_id: str, kind: str, shards: int, entrypoint: str) -> None:
    engine.submit(
        {
            "job_id": job_id,
            "kind": kind,
            "dataset": {"uri": "synthetic://linear?dim=4&noise=0.05&seed=3", "num_samples": shards * 10},
            "sharding": {"shard_count": shards},
            "entrypoint": entrypoint,
        }
    )


def worker(settings: Settings, clients: dict[str, Any], fast_url: str | None) -> Worker:
    return Worker(
        allow=TRUSTED,
        sqs=clients["sqs"],
        s3=clients["s3"],
        ddb=clients["dynamodb"],
        job_table=settings.job_table,
        task_queue_url=settings.task_queue_url,
        results_queue_url=settings.results_queue_url,
        fast_results_queue_url=fast_url,
        wait_s=1,
    )


def bodies(clients: dict[str, Any], url: str) -> list[dict[str, Any]]:
    return [json.loads(m["Body"]) for m in receive_all(clients["sqs"], url)]


def fast_queue(clients: dict[str, Any]) -> str:
    return str(clients["sqs"].create_queue(QueueName=f"fast-{uuid.uuid4().hex[:10]}")["QueueUrl"])


def test_a_small_rounds_results_and_its_reduce_take_the_fast_queue(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a data_parallel round of 2 shards and a worker that knows the fast queue
    fast = fast_queue(clients)
    submit(engine, "route-dp", "data_parallel", 2, "examples.linear:train")
    w = worker(settings, clients, fast)
    # WHEN it trains both shards
    assert w.run(threading.Event(), max_tasks=2) == 2
    # THEN both results are on the fast queue, none on the bulk one
    trained = bodies(clients, fast)
    assert sorted((r["task_type"], r["shard_id"]) for r in trained) == [("train", 0), ("train", 1)]
    assert bodies(clients, settings.results_queue_url) == []
    # AND WHEN the aggregator records them (the round closes, the reduce is sent) and the worker reduces
    assert engine.ingest([Outcome(ShardResult.from_json(json.dumps(r))) for r in trained]) == []
    assert w.run(threading.Event(), max_tasks=3) == 3  # max_tasks counts the slot's tasks so far
    # THEN the reduce's result took the fast queue too
    (reduced,) = bodies(clients, fast)
    assert (reduced["task_type"], reduced["status"]) == ("reduce", "succeeded")
    assert bodies(clients, settings.results_queue_url) == []


def test_a_big_rounds_train_results_take_the_bulk_queue(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a map round of more tasks than the fast path takes
    fast = fast_queue(clients)
    submit(engine, "route-big", "map", FAST_ROUTE_MAX_TASKS + 1, "tests.workloads:ok")
    # WHEN a worker runs two of its tasks
    assert worker(settings, clients, fast).run(threading.Event(), max_tasks=2) == 2
    # THEN their results are on the bulk queue: a flood keeps the bulk source's big batches
    assert len(bodies(clients, settings.results_queue_url)) == 2
    assert bodies(clients, fast) == []


def test_a_worker_told_off_or_without_a_fast_queue_sends_everything_to_the_bulk_queue(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    fast = fast_queue(clients)
    submit(engine, "route-off", "map", 2, "tests.workloads:ok")
    assert worker(settings, clients, OFF).run(threading.Event(), max_tasks=1) == 1
    assert worker(settings, clients, None).run(threading.Event(), max_tasks=1) == 1
    assert len(bodies(clients, settings.results_queue_url)) == 2
    assert bodies(clients, fast) == []
