"""DLQ handler Lambda: the task dead-letter queue's consumer.

A task lands here after ``maxReceiveCount`` receives without being deleted (its
worker crashed, or it failed every attempt without reporting). The handler records
the shard as failed on its job, with the receive count and the original task body
(kept for ``shardq retry``), and advances the job, which fails it when the failure
budget is spent. A job never hangs at 99 % because a shard died silently.
"""

from __future__ import annotations

from typing import Any

from lambdas.batch import SqsSource, process_batch
from lambdas.common import engine, ingest, logger, metrics, tracer
from shardq.core.contracts import ShardResult, ShardTask
from shardq.core.jobstore import Outcome

# The task DLQ is FIFO; a failed dead task blocks only its own message group (one job's lane).
TASK_DLQ = SqsSource(fifo=True, skip_group_on_error=True)


def parse(record: Any) -> Outcome:
    """A dead task → a failed outcome for its shard (raises ValidationError if malformed)."""
    task = ShardTask.from_json(record.body)
    receives = int(record.attributes.approximate_receive_count or 0)
    max_receives = engine().settings.max_receive_count
    result = ShardResult.for_task(
        task,
        "failed",
        attempt=max(1, receives),
        error=(
            f"task dead-lettered after reaching maxReceiveCount={max_receives} without a result "
            f"(worker crashed, timed out or could not post); receive count {receives}"
        ),
    )
    return Outcome(result=result, source="dlq", task_body=record.body, receive_count=receives)


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Record dead tasks as failed shards and move their jobs on."""
    return handle_dead_tasks(event, context)


def handle_dead_tasks(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The handler's body, free of decorators so tests and benchmarks call it directly."""
    return process_batch(
        event, parse=parse, flush=lambda outcomes: ingest(outcomes, context), source=TASK_DLQ
    )
