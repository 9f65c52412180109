"""Aggregator Lambda: the results queue's consumer.

Each batch (up to 100 results from the standard results queue) is parsed record by
record; the valid results are recorded once per (job, round, shard, type) with one
DynamoDB transaction per job, and each job touched is advanced (reduce, next round,
finish). Partial batch response: a malformed result, or a result whose job could not
be recorded, is reported alone and comes back (then to the results DLQ).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lambdas.batch import STANDARD_QUEUE, process_batch
from lambdas.common import ingest, logger, metrics, tracer
from shardq.core.advance import results_message
from shardq.core.jobstore import Outcome
from shardq.core.rounds import Tick


def parse(record: Any) -> Outcome | Tick:
    """A results-queue record → the outcome it reports, or a round deadline's tick (raises
    ValidationError if malformed)."""
    item = results_message(record.body)
    if isinstance(item, Outcome):
        # When the result was sent: the aggregator sizes the job's window from it (shardq.core.depth).
        item = sent(item, record.raw_event.get("attributes", {}).get("SentTimestamp"))
    return item


def sent(outcome: Outcome, stamp: str | None) -> Outcome:
    """``outcome`` with ``sent_at`` from a record's ``SentTimestamp`` (milliseconds; absent: as is)."""
    try:
        return replace(outcome, sent_at=int(stamp) / 1000) if stamp else outcome
    except ValueError:
        return outcome


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
