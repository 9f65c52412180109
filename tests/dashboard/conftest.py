"""Dashboard fixtures: small real jobs on the local cloud, and the dashboard served over them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from shardq.core.contracts import ShardResult
from shardq.core.engine import Engine
from shardq.core.jobstore import JobRecord, Outcome
from shardq.local.resources import dlq_urls
from shardq.worker.runtime import Worker
from tests.helpers import receive_all

# The dashboard's packages are optional (make dashboard): each test module skips without them,
# so this file imports them inside the fixtures only.
NEEDS = "dashboard packages not installed: run `make dashboard`"

DATA_PARALLEL = {
    "job_id": "dash-fedavg",
    "kind": "data_parallel",
    "dataset": {"uri": "synthetic://linear?dim=8&noise=0.05&seed=7", "num_samples": 2000},
    "sharding": {"shard_count": 4},
    "rounds": 3,
    "hyperparameters": {"lr": 0.05, "epochs": 2, "batch_size": 64},
    "max_parallel": 2,
    "entrypoint": "tests.dashboard.training:train",
}
SWEEP = {
    "job_id": "dash-sweep",
    "kind": "sweep",
    "dataset": {"uri": "synthetic://linear?dim=8&noise=0.05&seed=7", "num_samples": 1000},
    "search_space": {"lr": [0.2, 0.05, 0.01], "epochs": [1, 2]},
    "objective": {"metric": "val_loss", "direction": "minimize"},
    "max_failed_shards": 1,
    "entrypoint": "tests.dashboard.training:train_except_shard_2",
}


def workers(engine: Engine, count: int = 2) -> list[Worker]:
    """Real shardq workers (in this process, one lane each) on this test's queues."""
    return [
        Worker(
            sqs=engine.sqs,
            s3=engine.s3,
            task_queue_url=engine.settings.task_queue_url,
            results_queue_url=engine.settings.results_queue_url,
            ddb=engine.ddb,
            job_table=engine.settings.job_table,
            worker_id=f"worker-{i}",
            wait_s=0,
        )
        for i in range(count)
    ]


def aggregate(engine: Engine) -> int:
    """What the aggregator Lambda does behind its event source: record every queued result."""
    messages = receive_all(engine.sqs, engine.settings.results_queue_url)
    outcomes = [Outcome(ShardResult.from_json(m["Body"])) for m in messages]
    failed = engine.ingest(outcomes)
    assert not failed, failed
    return len(outcomes)


def run_job(engine: Engine, request: dict[str, Any], *, timeout: float = 300.0) -> JobRecord:
    """Submit ``request`` and drive it to its end with two real workers; the final job record."""
    job_id = engine.submit(request)["job_id"]
    crew = workers(engine)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in crew:
            w.poll_once()
        aggregate(engine)
        job = engine.store.get_job(job_id)
        if job.status != "RUNNING":
            return job
    raise TimeoutError(f"{job_id} did not finish within {timeout:.0f} s")


@pytest.fixture
def data(engine: Engine, clients: dict[str, Any]) -> Any:
    """The dashboard's data access over this test's table and queues."""
    from shardq.dashboard.data import DashboardData

    dlqs = dlq_urls(clients["sqs"], engine.settings)
    outputs = {
        "JobTableName": engine.settings.job_table,
        "TaskQueueUrl": engine.settings.task_queue_url,
        "TaskDlqUrl": dlqs["tasks"],
        "ResultsQueueUrl": engine.settings.results_queue_url,
        "ResultsDlqUrl": dlqs["results"],
        "ArtifactBucketName": engine.settings.artifact_bucket,
    }
    return DashboardData.from_outputs(outputs, lambda name: clients[name])


@pytest.fixture
def dashboard(data: Any) -> Iterator[Any]:
    """The dashboard served on a free 127.0.0.1 port, stopped after the test."""
    from shardq.dashboard.server import start_in_background

    running = start_in_background(data, port=0, refresh_s=0.5, source="test")
    yield running
    running.stop()
