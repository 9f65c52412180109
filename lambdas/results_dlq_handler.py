"""Results DLQ handler Lambda: the results dead-letter queue's consumer (issue #22).

A result lands in the results DLQ after ``maxReceiveCount`` deliveries the aggregator did not
acknowledge: its job could not be recorded (throttling, an outage), or it names no task the
job planned, or no task at all. Before this handler nothing read that queue, and a job whose
shard result was there waited forever. Each message is parsed exactly as the aggregator parses
it (``shardq.core.advance.results_message``, one parser):

* a valid result is recorded and its job advanced, as the aggregator would have;
* a result the parser rejects but that names a task (job, round, shard, type) is recorded as
  that task's failure, with the parser's reasons (``shardq.core.verdicts.rejected``);
* a body that names no task, an unknown job or a task the job never planned cannot be recorded:
  it is reported failed and stays in the DLQ (alarmed on its depth), and ``shardq dlq show``
  says why by parsing it again (SQS keeps the original body and attributes on a redrive, so a
  reason is not carried with it; the parse is always right). The same reason is logged here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lambdas.batch import STANDARD_QUEUE, process_batch
from lambdas.common import ingest, logger, metrics, tracer
from shardq.core.advance import results_message
from shardq.core.jobstore import Outcome
from shardq.core.rounds import Tick
from shardq.core.verdicts import RESULTS_DLQ_SOURCE


def parse(record: Any) -> Outcome | Tick:
    """A dead result → the outcome to record (raises ValidationError when it names no task)."""
    item = results_message(record.body)
    if isinstance(item, Outcome) and item.source == "worker":
        receives = int(record.attributes.approximate_receive_count or 0) or None
        item = replace(item, source=RESULTS_DLQ_SOURCE, receive_count=receives)
    return item


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Record dead results (or the failure they stand for) and move their jobs on."""
    return handle_dead_results(event, context)


def handle_dead_results(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The handler's body, free of decorators so tests and benchmarks call it directly."""
    return process_batch(
        event, parse=parse, flush=lambda outcomes: ingest(outcomes, context), source=STANDARD_QUEUE
    )
