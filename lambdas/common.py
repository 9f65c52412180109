"""What every handler shares: Powertools objects and the engine, built once per container."""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from lambdas.tracing import LazyTracer
from shardq.core.advance import lambda_range_dispatch
from shardq.core.clients import client
from shardq.core.engine import Engine
from shardq.core.settings import Settings

# The splitter's continuation event: {"shardq_continue": {"job_id": ...}}.
CONTINUE_KEY = "shardq_continue"
logger = Logger(service="shardq")
# Built (and X-Ray imported) only where tracing is on: lambdas/tracing.py says why.
tracer = LazyTracer(service="shardq")
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
        dispatch_ranges=dispatch_close_ranges,
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


def _splitter_function() -> str:
    """The splitter's name: configured on the other functions; the splitter is itself."""
    function = engine().settings.splitter_function or os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
    if not function:
        raise RuntimeError("SHARDQ_SPLITTER_FUNCTION is not set: cannot hand work to the splitter")
    return function


def dispatch_close_ranges(job_id: str, round_no: int, indexes: list[int]) -> None:
    """Hand each range of a big round's close to its own splitter invocation (asynchronous, so
    they run in parallel; Lambda retries a failed one twice, the close's watchdog tick after that)."""
    lambda_range_dispatch(client("lambda"), _splitter_function())(job_id, round_no, indexes)
    logger.info(
        "close ranges handed out", extra={"closing_job": job_id, "round": round_no, "ranges": len(indexes)}
    )


def ingest(outcomes: list[Any], context: Any) -> list[Any]:
    """Record a batch's outcomes, handing cut-short fan-outs on to the splitter."""
    return engine().ingest(outcomes, deadline=deadline(context), hand_on=continue_job)


def deadline(context: Any) -> float | None:
    """Wall-clock time at which this invocation is cut off, if the context knows."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return time.time() + remaining() / 1000.0 if remaining else None
