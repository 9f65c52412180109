"""Pipeline Lambda: a job ended, so the jobs that follow it start (or end) now.

Invoked by an EventBridge rule on shardq's ``Job Finished`` events (source ``shardq``), on AWS
and on the local cloud alike (ministack runs the same rule and handler). The event's
``detail.job_id`` is the job that ended; ``Engine.upstream_finished`` starts each job waiting for
it once it SUCCEEDED (or ends them naming it when it did not). Idempotent: EventBridge delivers
at least once and Lambda retries an asynchronous invocation, and a second run changes nothing.
A failure raises, so the invocation is retried and, past its retries, lands in the rule's DLQ.

A follower's round 0 too big for one invocation (a map job of a million shards) stops at a
checkpoint near the invocation's deadline and is handed to the splitter's asynchronous
continuation (``{"shardq_continue": {"job_id": ...}}``), as the splitter and the aggregator hand
on theirs; the next follower is still acted on.
"""

from __future__ import annotations

from typing import Any

from lambdas.common import continue_job, deadline, engine, logger, metrics, tracer

DETAIL_TYPE = "Job Finished"


def followers_of(event: dict[str, Any], context: Any = None) -> dict[str, str]:
    """Start or end the jobs that follow the event's job; ``{follower: its status}``.

    ``context``: the invocation's Lambda context (its remaining time bounds each fan-out; what
    is left is handed on to the splitter). Raises ``ValueError`` for an event that is not a
    shardq ``Job Finished`` event.
    """
    detail = event.get("detail")
    if event.get("detail-type") != DETAIL_TYPE or not isinstance(detail, dict) or not detail.get("job_id"):
        raise ValueError(
            f"not a shardq {DETAIL_TYPE!r} event (detail-type {event.get('detail-type')!r}); "
            "the rule should match source 'shardq' and this detail-type only"
        )
    return engine().upstream_finished(str(detail["job_id"]), deadline=deadline(context), hand_on=continue_job)


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Act on the jobs that follow the job that ended."""
    released = followers_of(event, context)
    if released:
        logger.info(
            "followers released", extra={"upstream": event["detail"]["job_id"], "followers": released}
        )
    return {"upstream": event["detail"]["job_id"], "followers": released}
