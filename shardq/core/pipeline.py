"""Pipelines: a job that follows another (``after``) waits, then starts once or ends with a reason.

A request with ``after: {"job_id", "use"}`` (``shardq.core.pipeline_fields``) is validated in
full at submit, its upstream job must exist, and the chain it joins must not loop back to it;
then it is created WAITING, with nothing enqueued, and linked to its upstream job
(``shardq.core.store.pipelines``). It leaves WAITING exactly once:

* the upstream job SUCCEEDED → its request is resolved (the best trial's hyperparameters laid
  over its own, or the upstream job's final model as ``model.init_uri``), checked again, and
  the job moves WAITING → RUNNING in one conditional write; then round 0 is enqueued (resumably,
  so a retried trigger finishes a fan-out that was cut short and sends nothing twice; a fan-out
  too big for one invocation is handed to the splitter's continuation at a checkpoint);
* the upstream job FAILED or was CANCELLED (or its result cannot be used) → the job ends FAILED
  with an error naming the upstream job, and its own ``Job Finished`` event goes out, so a chain
  a → b → c ends down the line;
* an operator cancels it → CANCELLED.

What triggers the check (``release_followers``) is the upstream job's ``Job Finished`` event: on
AWS an EventBridge rule invokes the pipeline Lambda (``lambdas/pipeline.py``); on the local cloud
the same rule runs the same handler. A job whose upstream had already ended at submit is acted
on at once, by the submit itself. Every step is idempotent, so a redelivered event, a retried
Lambda or a racing submit changes nothing twice.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shardq.core import planning
from shardq.core.artifacts import put_json
from shardq.core.enqueue import EnqueueIncomplete
from shardq.core.jobstore import JobNotFound, JobRecord
from shardq.core.pipeline_fields import USE_KINDS, After, wrong_kind_fix
from shardq.core.store.pipelines import WAITING, PipelineLinks
from shardq.core.validation import ValidationError

if TYPE_CHECKING:
    from shardq.core.engine import Engine
    from shardq.core.request import TrainingRequest

# Longest chain walked for a cycle at submit (a → b → … ); a deeper chain is refused.
MAX_CHAIN = 100


class UpstreamUnusable(RuntimeError):
    """The upstream job SUCCEEDED but offers nothing this job can take (no best trial, no model)."""


def links(engine: Engine) -> PipelineLinks:
    """The pipeline items of the engine's job table."""
    return PipelineLinks(engine.store.table, engine.store.ddb, clock=engine.store.clock)


def waiting_record(engine: Engine, request: TrainingRequest, record: JobRecord) -> JobRecord:
    """The WAITING record of a request with ``after``; ``ValidationError`` (nothing created) when
    its upstream job is unknown, cannot give what ``use`` asks, or the chain loops back to it."""
    after = request.after
    assert after is not None
    problems = []
    try:
        upstream = engine.store.get_job(after.job_id)
    except JobNotFound:
        raise ValidationError(
            "TrainingRequest",
            [
                f"after.job_id '{after.job_id}' names no job in table {engine.settings.job_table}; "
                "submit the upstream job first (or check the id with `shardq list`)"
            ],
        ) from None
    kinds = USE_KINDS[after.use]
    if upstream.kind not in kinds:
        problems.append(
            f"after.use '{after.use}' needs an upstream job of kind {' or '.join(kinds)}, but "
            f"'{after.job_id}' is a {upstream.kind} job; {wrong_kind_fix(after.use, upstream.kind)}"
        )
    chain = [record.job_id, upstream.job_id]
    cursor: JobRecord | None = upstream
    while cursor is not None and cursor.request.after is not None:
        nxt = cursor.request.after.job_id
        if nxt in chain:
            problems.append(f"after.job_id '{after.job_id}' closes a cycle: {' → '.join([*chain, nxt])}")
            break
        chain.append(nxt)
        if len(chain) > MAX_CHAIN:
            problems.append(f"the chain of jobs after '{after.job_id}' is longer than {MAX_CHAIN} jobs")
            break
        try:
            cursor = engine.store.get_job(nxt)
        except JobNotFound:
            cursor = None  # expired upstream of an upstream: the chain ends there
    if problems:
        raise ValidationError("TrainingRequest", problems)
    return dataclasses.replace(record, status=WAITING, round_started_at=None)


def follow(engine: Engine, job: JobRecord) -> str:
    """Link a WAITING job to its upstream job, then act at once if that one already ended.

    The link is written before the upstream job's status is read: an upstream job that ends
    after the read finds the link when its event is handled. Returns the job's status.
    """
    after = job.request.after
    assert after is not None
    links(engine).link(after.job_id, job.job_id)
    return release(engine, job.job_id)


def release_followers(
    engine: Engine,
    upstream_id: str,
    *,
    deadline: float | None = None,
    hand_on: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """The upstream job ended: act on each job that follows it; ``{follower: its status}``.

    ``deadline`` and ``hand_on`` as for ``release``: a follower's round 0 too big for this
    invocation is handed on, and the next follower is still acted on.
    """
    return {
        follower: release(engine, follower, deadline=deadline, hand_on=hand_on)
        for follower in links(engine).followers(upstream_id)
    }


def release(
    engine: Engine,
    job_id: str,
    *,
    deadline: float | None = None,
    hand_on: Callable[[str], None] | None = None,
) -> str:
    """Start, end or leave a following job, as its upstream job's status says; its status after.

    Idempotent: a job that left WAITING is only brought forward (a started job's fan-out is
    finished from its cursor; an ended job's pending event is sent). A round-0 fan-out that
    nears ``deadline`` (wall-clock seconds) stops at a checkpoint and is handed to
    ``hand_on(job_id)`` (the splitter's asynchronous continuation on AWS), as the splitter and
    the aggregator hand on theirs; without ``hand_on``, ``EnqueueIncomplete`` propagates.
    """
    try:
        job = engine.store.get_job(job_id)
    except JobNotFound:
        return "UNKNOWN"  # expired, or never created (a submit refused after writing the link)
    after = job.request.after
    if job.status == "RUNNING":
        _resume(engine, job_id, deadline, hand_on)
    elif job.terminal and job.event_pending:
        engine.finisher.publish_finished(job)
    if job.status != WAITING or after is None:
        return engine.store.get_job(job_id).status
    try:
        upstream = engine.store.get_job(after.job_id)
    except JobNotFound:
        return _end(engine, job, "FAILED", f"upstream job '{after.job_id}' is gone (expired or deleted)")
    if upstream.status == "SUCCEEDED":
        try:
            request_json, model_uri = resolve(engine, job, upstream, after)
        except (UpstreamUnusable, ValidationError) as exc:
            return _end(engine, job, "FAILED", f"upstream job '{after.job_id}' SUCCEEDED but {exc}")
        if links(engine).start(job_id, request_json=request_json, model_uri=model_uri):
            engine.metric("PipelineJobsStarted", 1, "Count")
        _resume(engine, job_id, deadline, hand_on)  # round 0 from its cursor; arms its deadline
        return engine.store.get_job(job_id).status
    if upstream.terminal:
        reason = f": {upstream.error}" if upstream.error else ""
        return _end(
            engine,
            job,
            "FAILED",
            f"upstream job '{after.job_id}' ended {upstream.status}{reason}; nothing of this job ran",
            ended=upstream.finished_at,
        )
    return WAITING


def _resume(
    engine: Engine, job_id: str, deadline: float | None, hand_on: Callable[[str], None] | None
) -> None:
    """``Engine.resume`` (enqueue from the cursor, then advance), handing a fan-out cut short by
    ``deadline`` on: its cursor is stored, so the continuation sends the rest and nothing twice."""
    try:
        engine.resume(job_id, deadline=deadline)
    except EnqueueIncomplete:
        if hand_on is None:
            raise
        hand_on(job_id)
        engine.metric("PipelineFanOutsHandedOn", 1, "Count")


def never_started(job: JobRecord) -> bool:
    """A pipeline job that ended (or waits) without ever starting: nothing of it was enqueued."""
    return job.request.after is not None and job.round == 0 and job.enqueued(0, "train") == 0


def cancel_waiting(engine: Engine, job: JobRecord) -> bool:
    """An operator's cancel of a WAITING job: it ends CANCELLED (False if it had left WAITING)."""
    return _end(engine, job, "CANCELLED", "cancelled while waiting for its upstream job") == "CANCELLED"


def resolve(engine: Engine, job: JobRecord, upstream: JobRecord, after: After) -> tuple[str, str | None]:
    """The job's request and initial model once its upstream job SUCCEEDED: ``(request JSON, model)``.

    Raises ``UpstreamUnusable`` (the sweep has no best trial, the job no final model) or
    ``ValidationError`` (the resolved request breaks a rule, e.g. its size).
    """
    from shardq.core.request import TrainingRequest

    manifest = _manifest(engine, upstream)
    best = manifest.get("best") if upstream.kind == "sweep" else None
    data = job.request.to_dict()
    if after.use == "best":
        if not best:
            raise UpstreamUnusable("it has no best trial (every trial failed or diverged)")
        data["hyperparameters"] = {**data.get("hyperparameters", {}), **best["hyperparameters"]}
        # A sweep that follows a sweep keeps its own search: the best's fixed values move out of it.
        if isinstance(data.get("search_space"), dict):
            data["hyperparameters"] = {
                k: v for k, v in data["hyperparameters"].items() if k not in data["search_space"]
            }
    else:
        model = (
            manifest.get("final_model_uri")
            if upstream.kind == "data_parallel"
            else (best or {}).get("artifact_uri")
        )
        if not model:
            raise UpstreamUnusable("it has no final model to start from")
        data["model"] = {**data.get("model", {}), "init_uri": model}
    resolved = TrainingRequest.from_dict(data)
    return resolved.to_json(), resolved.model.get("init_uri")


def _manifest(engine: Engine, job: JobRecord) -> dict[str, Any]:
    if not job.result_uri:
        raise UpstreamUnusable("it has no result manifest")
    bucket, key = planning.split_s3(job.result_uri)
    try:
        body = engine.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except engine.s3.exceptions.NoSuchKey:
        raise UpstreamUnusable(f"its result manifest {job.result_uri} is gone") from None
    return dict(json.loads(body))


def _end(engine: Engine, job: JobRecord, status: str, error: str, *, ended: str | None = None) -> str:
    """WAITING → ``status`` once: the manifest (no outcomes), the transition, the event."""
    finisher = engine.finisher
    layout = planning.Layout(finisher.bucket, job.job_id)
    manifest = {**finisher.manifest(job, status, error), "finished_at": ended or engine.store.stamp()}
    put_json(engine.s3, finisher.bucket, layout.manifest_key(), manifest)
    expires = datetime.now(UTC) + timedelta(days=finisher.job_ttl_days)
    won = links(engine).end(
        job.job_id,
        status,
        finished_at=manifest["finished_at"],
        result_uri=f"s3://{layout.bucket}/{layout.manifest_key()}",
        error=error,
        expires_at=int(expires.timestamp()),
    )
    current = engine.store.get_job(job.job_id)
    if won:
        engine.metric("JobsFinished", 1, "Count")
    elif current.terminal:
        # Lost to another ending: put back the manifest that matches the job's status.
        winner = {
            **finisher.manifest(current, current.status, current.error),
            "finished_at": current.finished_at,
        }
        put_json(engine.s3, finisher.bucket, layout.manifest_key(), winner)
    if current.event_pending:
        finisher.publish_finished(current)
    return current.status


def after_view(job: JobRecord) -> dict[str, Any] | None:
    """What the read views show of a pipeline job (``status --json``'s ``after``); None otherwise:
    the job it follows, what it takes, whether it still waits, and that in words."""
    after = job.request.after
    if after is None:
        return None
    what = "its best trial's hyperparameters" if after.use == "best" else "its final model"
    waiting = job.status == WAITING
    text = (
        f"waiting for job {after.job_id} to succeed, then takes {what}"
        if waiting
        else f"follows job {after.job_id} (takes {what})"
    )
    return {**after.to_dict(), "waiting": waiting, "text": text}
