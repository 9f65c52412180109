"""Aggregator Lambda: the results queue's consumer.

Each batch (up to 100 results from the standard results queue) is parsed record by
record; the valid results are recorded once per (job, round, shard, type) with one
DynamoDB transaction per job, and each job touched is advanced (reduce, next round,
finish). Partial batch response: a malformed result, or a result whose job could not
be recorded, is reported alone and comes back (then to the results DLQ).
"""

from __future__ import annotations

from typing import Any

from lambdas.batch import STANDARD_QUEUE, process_batch
from lambdas.common import ingest, logger, metrics, tracer
from shardq.core.advance import results_message
from shardq.core.jobstore import Outcome
from shardq.core.rounds import Tick


def parse(record: Any) -> Outcome | Tick:
    """A results-queue record → the outcome it reports, or a round deadline's tick (raises
    ValidationError if malformed)."""
    return results_message(record.body)


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Record the batch's results exactly once and move their jobs on."""
    return aggregate(event, context)


def aggregate(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The handler's body, free of decorators so tests and benchmarks call it directly."""
    return process_batch(
        event, parse=parse, flush=lambda outcomes: ingest(outcomes, context), source=STANDARD_QUEUE
    )
