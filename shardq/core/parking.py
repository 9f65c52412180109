"""Parked results: dead results no job can record, kept visible with the reason they were refused.

Why a queue of its own (issue #22, item 2; docs/ARCHITECTURE.md, "Parked results"). A result in
the results DLQ that names no planned task (not JSON, no job/round/shard, an unknown job, a
shard the job never planned) can never be recorded, however often it is delivered. Left in the
DLQ and reported as a batch item failure, it would be redelivered to its consumer every
visibility timeout, invisible to ``shardq dlq show`` most of the time, and burn Lambda
invocations until SQS's retention dropped it. So the results DLQ handler *parks* it: it sends
the body, with the reason as a message attribute, to the parked-results queue (no consumer, 14
days' retention, alarmed on depth), and only then lets the DLQ delete it. The send comes first,
so a crash in between leaves a duplicate, never a loss. ``shardq dlq show --queue results``
lists the DLQ and the parked queue with the reason; ``shardq dlq redrive --queue results``
moves parked results back to the results queue for another try (after the user fixed a job, say).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shardq.core.advance import foreign_outcome
from shardq.core.contracts import ShardResult
from shardq.core.fanout import FanOut, FanOutError
from shardq.core.jobstore import JobNotFound, Outcome
from shardq.core.redrive import AttributedMessage

# Message attributes a parked result carries (a redrive keeps them; parking again replaces them).
REASON_ATTRIBUTE = "shardq-parked-reason"
FROM_ATTRIBUTE = "shardq-parked-from"
# SQS allows 256 KiB of attributes; a reason is a sentence or two, cut so that it never matters.
MAX_REASON_CHARS = 1000


@dataclass(frozen=True)
class Parked:
    """A dead result to park: its body, its original message attributes and why it was refused."""

    body: str
    reason: str
    message_id: str
    attributes: Mapping[str, Any] | None = None

    def message(self) -> AttributedMessage:
        """The message sent to the parked-results queue: the same body, the reason beside it."""
        kept = {
            k: v for k, v in (self.attributes or {}).items() if k not in (REASON_ATTRIBUTE, FROM_ATTRIBUTE)
        }
        kept[REASON_ATTRIBUTE] = {"DataType": "String", "StringValue": self.reason[:MAX_REASON_CHARS]}
        kept[FROM_ATTRIBUTE] = {"DataType": "String", "StringValue": self.message_id}
        return AttributedMessage(body=self.body, attributes=kept)


def park(sqs: Any, url: str, items: Sequence[Parked]) -> list[tuple[Parked, Exception]]:
    """Send ``items`` to the parked-results queue at ``url``; returns those not sent, each with its error.

    The caller lets the DLQ delete a dead result only after it was sent here (at-least-once).
    """
    messages = [p.message() for p in items]
    try:
        if messages:
            FanOut(sqs, url, max_in_flight=1).send(messages)
    except FanOutError as exc:
        unsent = {id(m) for m in exc.unsent}
        return [(p, exc) for p, m in zip(items, messages, strict=True) if id(m) in unsent]
    except Exception as exc:  # the call failed as a whole (after botocore's retries): none was parked
        return [(p, exc) for p in items]
    return []


def reason_of(message: Mapping[str, Any]) -> str | None:
    """The reason a received parked result carries (None for a message that was never parked)."""
    attribute = (message.get("MessageAttributes") or {}).get(REASON_ATTRIBUTE) or {}
    value = attribute.get("StringValue")
    return str(value) if value else None


def job_problem(store: Any) -> Callable[[ShardResult], str | None]:
    """Why the job store cannot take a result: its job is unknown, or it names a task the job never
    planned (None when it could take it). The results DLQ handler parks on it; ``dlq show`` says it."""

    def problem(result: ShardResult) -> str | None:
        try:
            job = store.get_job(result.job_id)
        except JobNotFound:
            return f"job {result.job_id} does not exist (in table {store.table})"
        return foreign_outcome((job.task_count, job.rounds, job.kind), job.job_id, Outcome(result=result))

    return problem
