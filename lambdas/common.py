"""What every handler shares: Powertools objects and the engine, built once per container."""

from __future__ import annotations

import functools
import json
import time
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

from shardq.core.clients import client
from shardq.core.engine import Engine
from shardq.core.settings import Settings

# The splitter's continuation event: {"shardq_continue": {"job_id": ...}}.
CONTINUE_KEY = "shardq_continue"
logger = Logger(service="shardq")
tracer = Tracer(service="shardq")
metrics = Metrics(namespace="shardq", service="shardq")


def _metric(name: str, value: float, unit: str) -> None:
    metrics.add_metric(name=name, unit=MetricUnit(unit), value=value)


@functools.cache
def engine() -> Engine:
    """The engine over the stack's resources (settings parsed once per container)."""
    settings = Settings.from_env()
    return Engine(
        settings=settings,
        ddb=client("dynamodb"),
        sqs=client("sqs"),
        s3=client("s3"),
        events=client("events"),
        metric=_metric,
    )


def continue_job(job_id: str, function: str | None = None) -> None:
    """Hand a job's unfinished fan-out to the splitter (asynchronous continuation).

    ``function`` defaults to ``SHARDQ_SPLITTER_FUNCTION``; the splitter passes its own name.
    """
    function = function or engine().settings.splitter_function
    if not function:
        raise RuntimeError("SHARDQ_SPLITTER_FUNCTION is not set: cannot hand the fan-out on")
    client("lambda").invoke(
        FunctionName=function,
        InvocationType="Event",
        Payload=json.dumps({CONTINUE_KEY: {"job_id": job_id}}).encode(),
    )
    logger.info("fan-out handed on to the splitter", extra={"continued_job": job_id})


def ingest(outcomes: list[Any], context: Any) -> list[Any]:
    """Record a batch's outcomes, handing cut-short fan-outs on to the splitter."""
    return engine().ingest(outcomes, deadline=deadline(context), hand_on=continue_job)


def deadline(context: Any) -> float | None:
    """Wall-clock time at which this invocation is cut off, if the context knows."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return time.time() + remaining() / 1000.0 if remaining else None


class StagedBatchProcessor:
    """Powertools partial batch processing with one write per batch instead of per record.

    The record handler only parses a record into an ``Outcome`` and stages it; when the
    batch has been read, ``flush`` records every staged outcome at once (one DynamoDB
    transaction per job) and the records whose job failed are reported as batch item
    failures next to the ones that did not parse. FIFO sources keep FIFO semantics:
    Powertools' FIFO processor stops at the first failure (or skips only its group).
    """

    def __init__(self, processor: Any, flush: Any) -> None:
        self.processor = processor
        self.flush = flush

    def process(self, event: dict[str, Any], parse: Any, context: Any) -> dict[str, Any]:
        """Run the batch; returns the ``batchItemFailures`` response."""
        from aws_lambda_powertools.utilities.batch import process_partial_response

        staged: list[tuple[Any, Any]] = []

        def record_handler(record: Any) -> None:
            staged.append((record, parse(record)))

        processor = self.processor
        original_clean = processor._clean

        def clean() -> None:
            # Runs inside Powertools' context manager, after every record was handed to us and
            # before it builds the response: move the records whose flush failed to failures.
            failures = self.flush([outcome for _, outcome in staged])
            failed_ids = {id(outcome) for outcome, _ in failures}
            errors = {id(outcome): exc for outcome, exc in failures}
            for record, outcome in staged:
                if id(outcome) in failed_ids:
                    exc = errors[id(outcome)]
                    processor.success_messages = [m for m in processor.success_messages if m is not record]
                    processor.failure_handler(record, (type(exc), exc, exc.__traceback__))
            original_clean()

        processor._clean = clean
        try:
            return dict(
                process_partial_response(event=event, record_handler=record_handler, processor=processor)
            )
        finally:
            processor._clean = original_clean
