"""Splitter Lambda: a TrainingRequest in, a job and its round-0 tasks out.

Invoke it directly (``aws lambda invoke``, a console test event, ``shardq submit``)
with the request as the payload. Answers ``{"ok": true, "job_id", "status", "shards",
"rounds", "created"}``, or ``{"ok": false, "error", "message", "problems"}`` for a
request it rejects (nothing is created then). A huge fan-out that would outlive the
invocation hands itself on: ``{"shardq_continue": {"job_id": ...}}`` invoked async.
The close of a big map round comes here in ranges, one async invocation each:
``{"shardq_close": {"job_id": ..., "round": ..., "range": ...}}``.
"""

from __future__ import annotations

from typing import Any

from lambdas.common import (
    CONTINUE_KEY,
    continue_job,
    deadline,
    dispatch_close_ranges,
    engine,
    logger,
    metrics,
    tracer,
)
from shardq.core.advance import CLOSE_KEY
from shardq.core.contracts import JOB_ID_RE, ValidationError
from shardq.core.engine import CloseRangeIncomplete, EnqueueIncomplete, JobConflict
from shardq.core.tenancy import invoked_tenant


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Validate, create the job, enqueue round 0 (or continue an enqueue)."""
    return split(event, context)


def split(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The handler's body, free of decorators so tests and benchmarks call it directly."""
    try:
        if isinstance(event, dict) and CONTINUE_KEY in event:
            job_id = continuation_job_id(event[CONTINUE_KEY])
            logger.set_correlation_id(job_id)
            view = engine().resume(job_id, deadline=deadline(context))
            return {"ok": True, **view, "continued": True}
        if isinstance(event, dict) and CLOSE_KEY in event:
            job_id, round_no, index = close_range_event(event[CLOSE_KEY])
            logger.set_correlation_id(job_id)
            answer: dict[str, Any] = {"ok": True, "job_id": job_id, "round": round_no, "range": index}
            try:
                return {
                    **answer,
                    "status": engine().close_range(job_id, round_no, index, deadline=deadline(context)),
                }
            except CloseRangeIncomplete:
                # Its checkpoint is stored: a fresh invocation goes on from there.
                dispatch_close_ranges(job_id, round_no, [index])
                return {**answer, "status": "RUNNING", "continuing": True}
        if isinstance(event, dict) and isinstance(event.get("job_id"), str):
            logger.set_correlation_id(event["job_id"])
        # A payload that is not an object (a list, a string) is rejected by the validator with
        # "request must be a JSON object", rather than as an empty request missing every field.
        # On AWS a tenant's principals invoke the splitter through their own alias: its name, not
        # the request, says whose job this is (shardq.core.tenancy.invoked_tenant).
        tenant = invoked_tenant(getattr(context, "invoked_function_arn", None))
        answer = engine().submit(event, deadline=deadline(context), invoked_as=tenant)
        logger.set_correlation_id(answer["job_id"])
        logger.info("job submitted", extra={"job": answer})
        return {"ok": True, **answer}
    except ValidationError as exc:
        logger.warning("request rejected", extra={"problems": exc.problems})
        return {"ok": False, "error": "ValidationError", "message": str(exc), "problems": exc.problems}
    except JobConflict as exc:
        return {"ok": False, "error": "JobConflict", "message": str(exc), "problems": [str(exc)]}
    except EnqueueIncomplete as exc:
        # Hand the rest to a fresh invocation: the cursor on the job record says where to go on.
        logger.info("handing the fan-out on", extra={"done": exc.done, "total": exc.total})
        continue_job(exc.job_id, context.function_name)
        return {
            "ok": True,
            "job_id": exc.job_id,
            "status": "RUNNING",
            "enqueued": exc.done,
            "continuing": True,
        }


def close_range_event(raw: Any) -> tuple[str, int, int]:
    """(job id, round, range) of a ``{"shardq_close": {...}}`` event (ValidationError if malformed)."""
    job_id = raw.get("job_id") if isinstance(raw, dict) else None
    numbers: list[Any] = [raw.get(k) if isinstance(raw, dict) else None for k in ("round", "range")]
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise ValidationError(
            "close range", [f"{CLOSE_KEY}.job_id must be a shardq job id, got {job_id!r:.80}"]
        )
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        raise ValidationError(
            "close range", [f"{CLOSE_KEY}.round and .range must be integers >= 0, got {numbers!r:.80}"]
        )
    return job_id, int(numbers[0]), int(numbers[1])


def continuation_job_id(raw: Any) -> str:
    """The job id of a ``{"shardq_continue": {"job_id": ...}}`` event (ValidationError if malformed)."""
    job_id = raw.get("job_id") if isinstance(raw, dict) else None
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise ValidationError(
            "continuation", [f"{CONTINUE_KEY}.job_id must be a shardq job id, got {job_id!r:.80}"]
        )
    return job_id
