"""Chaos fixtures: a rig of fresh queues with short timeouts, the real handlers, worker processes.

``rig(**opts)`` provisions an isolated set of resources (``task_visibility_s``,
``max_receive_count``; the results queue gets a 2-second visibility timeout so a crashed
aggregator's batch comes back quickly) and a pool of ``workers`` (with their ``faults`` and
extra ``worker_args``, see ``WorkerPool``), points the Lambda environment at it, and returns a
``Rig``: the engine the handlers use, a ``Pump`` standing in for the event source mappings,
and a ``WorkerPool`` (started on demand). Everything is torn down after the test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shardq.core.engine import Engine
from shardq.core.settings import Settings
from shardq.local.cloud import LocalCloud
from shardq.local.resources import provision
from tests.chaos.harness import Pump, WorkerPool

# Every scenario is seeded; CHAOS_SEED shifts all seeds at once to explore other schedules.
BASE_SEED = int(os.environ.get("CHAOS_SEED", "0"))


@dataclass
class Rig:
    """One scenario's world."""

    cloud: LocalCloud
    settings: Settings
    engine: Engine
    pump: Pump
    pool: WorkerPool
    dir: Path
    clients: dict[str, Any]


@pytest.fixture
def rig(
    cloud: LocalCloud, clients: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[..., Rig]]:
    from lambdas import aggregator, common, dlq_handler, results_dlq_handler
    from shardq.core.clients import client

    pools: list[WorkerPool] = []

    def make(
        *,
        task_visibility_s: int = 2,
        max_receive_count: int = 5,
        workers: int = 2,
        faults: Callable[[int], dict[str, Any] | None] | None = None,
        worker_args: tuple[str, ...] = (),
    ) -> Rig:
        settings = provision(
            clients["sqs"],
            clients["dynamodb"],
            clients["s3"],
            task_visibility_s=task_visibility_s,
            max_receive_count=max_receive_count,
            results_visibility_s=2,
        )
        for key, value in {**cloud.env(), **settings.as_env(), "POWERTOOLS_TRACE_DISABLED": "true"}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "shardq")
        monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "shardq")
        common.engine.cache_clear()
        client.cache_clear()
        engine = common.engine()
        pump = Pump(
            clients["sqs"],
            settings,
            aggregator.aggregate,
            dlq_handler.handle_dead_tasks,
            results_dlq_handler=results_dlq_handler.handle_dead_results,
        )
        pool = WorkerPool(cloud, settings, tmp_path, size=workers, faults=faults, extra_args=worker_args)
        pools.append(pool)
        return Rig(cloud, settings, engine, pump, pool, tmp_path, clients)

    yield make
    for pool in pools:
        pool.stop()
    common.engine.cache_clear()
    client.cache_clear()
