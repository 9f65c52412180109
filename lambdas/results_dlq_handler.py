"""Results DLQ handler Lambda: the results dead-letter queue's consumer (issue #22).

A result lands in the results DLQ after ``maxReceiveCount`` deliveries the aggregator did not
acknowledge: its job could not be recorded (throttling, an outage), or it names no task the
job planned, or no task at all. Before this handler nothing read that queue, and a job whose
shard result was there waited forever. Each message is parsed exactly as the aggregator parses
it (``shardq.core.advance.results_message``, one parser):

* a valid result is recorded and its job advanced, as the aggregator would have;
* a result the parser rejects but that names a task (job, round, shard, type) is recorded as
  that task's failure, with the parser's reasons (``shardq.core.verdicts.rejected``);
* a body that names no task, an unknown job or a task the job never planned can never be
  recorded: it is *parked* at once (``shardq.core.parking``): sent with the reason as a message
  attribute to the parked-results queue (no consumer, 14 days, alarmed on depth), then deleted
  from the DLQ, where ``shardq dlq show --queue results`` lists it with the reason and
  ``shardq dlq redrive --queue results`` can move it back. Reported failed instead, it would sit
  invisible between redeliveries for the queue's whole life. A stack without the parked queue
  (``SHARDQ_PARKED_RESULTS_QUEUE_URL`` unset) keeps the old way: reported failed, left in the DLQ.

What fails for a passing reason (throttling, an outage) is reported failed and comes back.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

from lambdas.batch import STANDARD_QUEUE, process_batch
from lambdas.common import engine, ingest, logger, metrics, tracer
from shardq.core.advance import results_message
from shardq.core.clients import client
from shardq.core.contracts import ValidationError
from shardq.core.jobstore import Outcome
from shardq.core.parking import Parked, job_problem, park
from shardq.core.rounds import Tick
from shardq.core.verdicts import RESULTS_DLQ_SOURCE, explain


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
    parked_url = engine().settings.parked_results_queue_url
    if not parked_url:
        return process_batch(
            event, parse=parse, flush=lambda outcomes: ingest(outcomes, context), source=STANDARD_QUEUE
        )
    records: dict[int, Any] = {}  # id(staged item) → its record, to park it with its body

    def parse_or_park(record: Any) -> Outcome | Tick | Parked:
        try:
            item = parse(record)
        except ValidationError:  # names no task: no delivery can ever record it
            return parked(record, explain(record.body))
        records[id(item)] = record
        return item

    def flush(items: list[Any]) -> list[tuple[Any, Exception]]:
        to_park = [i for i in items if isinstance(i, Parked)]
        failed: list[tuple[Any, Exception]] = []
        outcomes = [i for i in items if not isinstance(i, Parked)]
        problem = job_problem(engine().store)
        for item, exc in ingest(outcomes, context) if outcomes else []:
            why = _permanent(item, exc, problem)
            if why is None:
                failed.append((item, exc))  # a passing failure (throttling): it comes back
            else:
                record = records[id(item)]
                to_park.append(parked(record, explain(record.body, lambda _, why=why: why)))
        failed.extend(park(client("sqs"), parked_url, to_park))
        if to_park:
            logger.warning(
                "dead results parked: they name no planned task",
                extra={"parked": {p.message_id: p.reason[:300] for p in to_park}},
            )
            engine().metric("ResultsParked", len(to_park), "Count")
        return failed

    return process_batch(event, parse=parse_or_park, flush=flush, source=STANDARD_QUEUE)


def _permanent(item: Any, exc: Exception, problem: Any) -> str | None:
    """Why a staged outcome can never be recorded (None when its failure may pass)."""
    if not isinstance(item, Outcome):
        return None  # a round deadline's tick: its job is looked up again on the next delivery
    why: str | None = problem(item.result)
    if why is None and isinstance(exc, ValidationError):
        why = "; ".join(exc.problems)  # a task the job does not run now (e.g. not sampled this round)
    return why


def parked(record: Any, reason: str) -> Parked:
    """A dead result to park: its body and message attributes as SendMessage takes them."""
    return Parked(
        body=record.body,
        reason=reason,
        message_id=record.message_id,
        attributes=_send_attributes(record.raw_event.get("messageAttributes") or {}),
    )


def _send_attributes(received: dict[str, Any]) -> dict[str, Any]:
    """A Lambda event's message attributes (camelCase, binary as base64) → SendMessage's shape."""
    out: dict[str, Any] = {}
    for name, value in received.items():
        data_type = value.get("dataType", "String")
        if value.get("stringValue") is not None:
            out[name] = {"DataType": data_type, "StringValue": value["stringValue"]}
        elif value.get("binaryValue") is not None:
            out[name] = {"DataType": data_type, "BinaryValue": base64.b64decode(value["binaryValue"])}
    return out
