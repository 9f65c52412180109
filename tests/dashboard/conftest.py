"""Dashboard fixtures: small real jobs on the local cloud, and the dashboard served over them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from shardq.core.engine import Engine
from shardq.local.resources import dlq_urls
from tests.finished import aggregate, run_job, workers

__all__ = ["aggregate", "run_job", "workers"]

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
