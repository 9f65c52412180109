"""Real jobs run to their end in this process: real workers, and the aggregator's work done inline.

Used by the dashboard tests and the read-command matrix (tests/cli/test_read_matrix.py): each
submits a request, lets two ``shardq`` workers poll its tasks and records their results as the
aggregator Lambda would behind its event source, until the job ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from shardq.core.advance import results_message
from shardq.core.engine import Engine
from shardq.core.jobstore import JobRecord
from shardq.worker.runtime import Worker
from tests.helpers import TRUSTED, receive_all


def workers(engine: Engine, count: int = 2, price_per_hour: float = 0.0) -> list[Worker]:
    """Real shardq workers (in this process, one lane each) on the engine's queues, each at
    ``price_per_hour`` (``shardq worker --price-per-hour``; 0: unpriced)."""
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
            allow=TRUSTED,
            price_per_hour=price_per_hour,
        )
        for i in range(count)
    ]


def aggregate(engine: Engine) -> int:
    """What the aggregator Lambda does behind its event source: record every queued result."""
    messages = receive_all(engine.sqs, engine.settings.results_queue_url)
    # The aggregator's own parser: results, and the notices of tasks dropped after a budget stop.
    outcomes = [results_message(m["Body"]) for m in messages]
    failed = engine.ingest(outcomes)
    assert not failed, failed
    return len(outcomes)


def run_job(
    engine: Engine,
    request: dict[str, Any],
    *,
    timeout: float = 300.0,
    each: Callable[[JobRecord], None] | None = None,
    price_per_hour: float = 0.0,
) -> JobRecord:
    """Submit ``request`` and drive it to its end with two real workers; the final job record.

    ``each`` sees the job record after every step (a poll by each worker, then the aggregation):
    what a reader polling the running job, such as ``shardq watch``, would see.
    """
    job_id = engine.submit(request)["job_id"]
    crew = workers(engine, price_per_hour=price_per_hour)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in crew:
            w.poll_once()
        aggregate(engine)
        job = engine.store.get_job(job_id)
        if each is not None:
            each(job)
        if job.status != "RUNNING":
            return job
    raise TimeoutError(f"{job_id} did not finish within {timeout:.0f} s")
