"""Verdicts on results that cannot count as they arrived: non-finite metrics and rejected bodies.

Why this module exists (issue #22): a result the aggregator could not accept used to go round
the results queue until the results DLQ took it, where nothing read it, and its job waited
forever for that shard. Now every result that names a planned task ends as an outcome:

* **Non-finite metrics** (NaN, ±inf; a diverging trial or a broken shard) are read by the parser
  (``ShardResult.from_json`` accepts the non-standard tokens and the strings ``"nan"``, ``"inf"``,
  ``"-inf"``, and writes the strings back, so every body stays standard JSON) and judged here,
  by ``vet``: a sweep trial whose *objective* is non-finite is *diverged* (a final outcome of its
  own: ranked after every finite trial, never promoted, not counted against
  ``max_failed_shards``); a trial with a finite objective and some other non-finite metric is an
  ordinary succeeded trial (the metric kept in its row as ``"nan"``/``"inf"``, left out of every
  mean). Any other task with a non-finite metric is *failed*, naming the metric, so a shard model
  trained into NaN never enters a FedAvg average and a map job's metrics stay finite. The worker
  applies the same verdict before it posts (``checked``), and the aggregator again on what it
  receives (older workers, hand-posted results); a worker does not know a sweep's objective, so
  it leaves a trial's verdict to the aggregator.
* **Rejected bodies** (e.g. a negative ``num_samples``) that still name a task (job, round,
  shard, type) become that task's *failed* outcome with the parser's reasons (``rejected``):
  the aggregator records it at once, and the results DLQ handler does the same for whatever
  reaches the DLQ. A body that names no planned task stays in the DLQ, and ``explain`` says why
  (``shardq dlq show``): the body is parsed again, which is always right, instead of carrying a
  reason that SQS's redrive would not keep (a redriven message keeps its original body and
  attributes).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from shardq.core.contracts import ShardResult, ValidationError, finite_or_name
from shardq.core.messages import MAX_PRICE_PER_HOUR

# The ``source`` of an outcome recorded from a body the parser rejected.
REJECTED_SOURCE = "rejected"
# The ``source`` of a valid result the results DLQ handler recorded (the aggregator could not).
RESULTS_DLQ_SOURCE = "results-dlq"


def nonfinite(metrics: dict[str, float]) -> dict[str, str]:
    """The metrics that are NaN or ±inf, by name, each as its name in standard JSON (``"nan"``...)."""
    return {k: str(finite_or_name(v)) for k, v in sorted(metrics.items()) if not math.isfinite(v)}


def _listed(bad: dict[str, str]) -> str:
    return ", ".join(f"{name}={value}" for name, value in bad.items())


def vet(result: ShardResult, kind: str, objective: str | None = None) -> ShardResult:
    """The outcome ``result`` stands for in a job of ``kind`` (a sweep's ``objective`` metric).

    A succeeded result whose metrics are all finite is kept as it is, and so is any failed one.
    A sweep trial whose ``objective`` is non-finite is ``diverged`` (its metrics kept, shown as
    ``"nan"``/``"inf"``); only the objective decides it: a trial with a finite objective and
    another non-finite metric stays succeeded, and so does every trial while ``objective`` is
    None (a worker, which does not know it: the aggregator decides). In any other job a
    non-finite metric makes the result ``failed`` with an error naming the metric. A
    ``diverged`` result outside a sweep is ``failed`` too: only a trial can diverge and still
    count as done.
    """
    if result.status == "failed":
        return result
    bad = nonfinite(result.metrics)
    if kind == "sweep" and result.task_type == "train":
        if result.status == "diverged" or objective is None or objective not in bad:
            return result
        others = {k: v for k, v in bad.items() if k != objective}
        also = f" (also non-finite: {_listed(others)})" if others else ""
        return _with(
            result,
            "diverged",
            f"trial diverged: non-finite objective {objective}={bad[objective]}{also}; it ranks after "
            "every finite trial and is never promoted",
        )
    if result.status == "diverged":
        why = f"reported 'diverged', which only a sweep trial can be; {_listed(bad)}"
        return _with(result, "failed", why)
    if not bad:
        return result
    what = "its model would poison the average" if kind == "data_parallel" else "it cannot be summarized"
    return _with(
        result,
        "failed",
        f"non-finite metric {_listed(bad)}: {what}; the training diverged or the metric is broken",
    )


def _with(result: ShardResult, status: str, error: str) -> ShardResult:
    return dataclasses.replace(result, status=status, error=error)  # type: ignore[arg-type]


def checked(result: ShardResult, kind: str) -> ShardResult:
    """What a worker posts for ``result``: the aggregator's own parser and verdict, applied first.

    A result the parser would reject (a negative ``num_samples``, an ``s3://``-less model URI...)
    becomes a failed result of the same task naming every problem, so the worker never posts a
    body the aggregator must throw away; a non-finite metric gets its verdict (``vet``).
    """
    try:
        parsed = ShardResult.from_json(result.to_json())
    except ValidationError as exc:
        duration = result.duration_s if math.isfinite(result.duration_s) and result.duration_s >= 0 else 0.0
        return ShardResult(
            job_id=result.job_id,
            round=result.round,
            shard_id=result.shard_id,
            task_type=result.task_type,
            status="failed",
            duration_s=duration,
            worker_id=result.worker_id,
            attempt=max(1, min(result.attempt, 10_000)),
            error=f"the worker's result failed the aggregator's checks: {'; '.join(exc.problems)}",
            generation=result.generation,
            # The time was spent all the same: keep its price when that one is valid.
            price_per_hour=result.price_per_hour if 0 <= result.price_per_hour <= MAX_PRICE_PER_HOUR else 0.0,
        )
    return vet(parsed, kind)


def _object(body: str | bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def rejected(body: str | bytes, error: ValidationError) -> ShardResult | None:
    """The failed result of the task a rejected ``body`` names, with the parser's reasons; None when
    the body names no task (no valid job id, round, shard id and task type)."""
    data = _object(body)
    if data is None:
        return None
    # The schema version too: a body of another version (a newer worker) is left in the DLQ, to be
    # redriven once the aggregator reads it, rather than recorded as a failure.
    identity = {k: data.get(k) for k in ("job_id", "round", "shard_id", "task_type", "schema_version")}
    identity = {k: v for k, v in identity.items() if v is not None}
    # Its retry generation too, when it is a valid one: a rejected body of a stale attempt is late.
    generation = data.get("generation")
    if isinstance(generation, int) and not isinstance(generation, bool) and 0 <= generation <= 1_000_000:
        identity["generation"] = generation
    reasons = "; ".join(error.problems)[:3000]
    try:
        return ShardResult.from_json(
            {**identity, "status": "failed", "error": f"result rejected by the aggregator: {reasons}"}
        )
    except ValidationError:
        return None


def explain(body: str | bytes, job_problem: Any = None) -> str:
    """Why a results-DLQ message was not recorded, from its body alone (and ``job_problem``).

    ``job_problem(result) -> str | None``: why the job cannot take a result that parsed (unknown
    job, a task it never planned); None when it could, so the message is only waiting for the
    results DLQ handler (or came here while the job store was failing).
    """
    try:
        result = ShardResult.from_json(body)
    except ValidationError as exc:
        named = rejected(body, exc)
        reasons = "; ".join(exc.problems)
        if named is None:
            return f"names no task, so no job can record it: {reasons}"
        problem = job_problem(named) if job_problem is not None else None
        if problem:
            return f"{problem}; also rejected: {reasons}"
        return f"rejected: {reasons} (the results DLQ handler records it as the shard's failure)"
    problem = job_problem(result) if job_problem is not None else None
    if problem:
        return problem
    return (
        "a valid result not recorded yet (the job store failed while it was delivered); "
        "the results DLQ handler records it"
    )
