"""The model-based test's asynchronous sweeps (ASHA, issue #27).

Submits may draw ``policy "asha"`` (``asha_fields``): a sweep whose trials are decided one result
at a time (``shardq.core.async_sweep``), fewer in flight than it has trials, so slots are reused.
After every step, over the same consistent scan of the table, ``asha_problems`` checks

8. **each decision once, never more in flight than ``max_parallel``**: the decisions
   (``ASYNC#`` items) are what the job's per-rung enqueue counters count, and the tasks decided
   without a counted outcome are at most ``max_parallel`` (before any retry: a retry sends the
   failed ones again on top, by design);
9. **a promotion follows the paper's rule**: a trial decided at rung ``r > 0`` has a counted,
   succeeded, finite rung ``r - 1`` outcome (never a diverged or failed one), and among the first
   ``known`` rung ``r - 1`` outcomes the job recorded (the ones its pass read) it ranked in the top
   ``known // eta`` (``rule "asha"``), or first where nothing could go on (``rule "drain"``); with
   ``early_stopping.promotion "eager"``, the top ``max(1, known // eta)``, ``rule "eager"`` only
   where ``known < eta`` and only in an eager sweep (``shardq.core.asha_rules``);

and ``asha_quiet_problem``: a RUNNING asynchronous sweep in a quiet world (no task, result or tick
in flight) can never end, since each of its steps is driven by a result.
"""

from __future__ import annotations

import json
import math
from typing import Any

from shardq.core.jobstore import JobRecord


def asha_fields(shards: int, seed: int = 0) -> dict[str, Any]:
    """A submit's ASHA fields: two rungs (budgets 1, 2) and one slot fewer than trials; an odd
    ``seed`` takes the eager promotion rule."""
    es: dict[str, Any] = {"method": "asha", "eta": 2, "min_budget": 1, "max_budget": 2}
    if seed % 2:
        es["promotion"] = "eager"
    return {"early_stopping": es, "max_parallel": max(1, shards - 1)}


def decided(store: Any, job_id: str, rung: int) -> set[int]:
    """The trials an asynchronous sweep decided at ``rung``."""
    return {d.trial for d in store.sweep_decisions(job_id, rung)}


def asha_problems(job: JobRecord, items: list[dict[str, Any]]) -> list[str]:
    """Invariants 8-9 over one job's items (see the module docstring)."""
    if not job.request.asynchronous:
        return []
    es, objective = job.request.early_stopping, job.request.objective
    assert es is not None and objective is not None
    problems: list[str] = []
    decisions = [i for i in items if i["sk"]["S"].startswith("ASYNC#")]
    per_rung: dict[int, int] = {}
    for d in decisions:
        if "backup" not in d:  # a backup copy answers its task's count (``core/async_backup.py``)
            per_rung[int(d["rung"]["N"])] = per_rung.get(int(d["rung"]["N"]), 0) + 1
    for rung in range(job.rounds):
        if job.enqueued(rung, "train") != per_rung.get(rung, 0):
            problems.append(
                f"rung {rung}: {per_rung.get(rung, 0)} decisions, counted {job.enqueued(rung, 'train')}"
            )
    counted: dict[tuple[int, int], dict[str, Any]] = {}
    for i in items:
        sk = i["sk"]["S"]
        if sk.startswith("RES#") and "#train#" in sk:
            result = json.loads(i["result"]["S"])
            counted[(int(result["round"]), int(result["shard_id"]))] = {
                **result,
                "recorded_at": i["recorded_at"]["S"],
            }
    in_flight = [d for d in decisions if (int(d["rung"]["N"]), int(d["trial"]["N"])) not in counted]
    if job.status == "RUNNING" and not job.retry_generation and len(in_flight) > job.request.max_parallel:
        problems.append(f"{len(in_flight)} tasks in flight, over max_parallel={job.request.max_parallel}")
    for d in decisions:
        rung, trial = int(d["rung"]["N"]), int(d["trial"]["N"])
        if rung == 0:
            continue
        below = counted.get((rung - 1, trial))
        value = None if below is None else below.get("metrics", {}).get(objective.metric)
        if below is None or below["status"] != "succeeded" or value is None or not math.isfinite(value):
            problems.append(f"trial {trial} promoted to rung {rung} without a finite rung {rung - 1} result")
            continue
        if job.retry_generation:
            continue  # a retry re-records failures: the order the pass read is gone
        known, rule = int(d["known"]["N"]), d["rule"]["S"]
        if rule == "eager" and (es.promotion != "eager" or known >= es.eta):
            problems.append(
                f"trial {trial} promoted to rung {rung} by the eager rule on {known} results "
                f"(promotion {es.promotion!r}, eta {es.eta})"
            )
            continue
        rung_results = sorted(
            (r for (k, _), r in counted.items() if k == rung - 1),
            key=lambda r: (r["recorded_at"], r["shard_id"]),
        )
        seen = rung_results[:known]
        if len(seen) < known or all(r["shard_id"] != trial for r in seen):
            problems.append(f"trial {trial} promoted to rung {rung} on {known} results it was not among")
            continue
        sign = 1.0 if objective.direction == "minimize" else -1.0
        finite = [
            r
            for r in seen
            if r["status"] == "succeeded"
            and math.isfinite(r.get("metrics", {}).get(objective.metric, math.nan))
        ]
        order = sorted(finite, key=lambda r: (sign * r["metrics"][objective.metric], r["shard_id"]))
        rank = next(i for i, r in enumerate(order) if r["shard_id"] == trial)
        allowed = 1 if rule == "drain" else known // es.eta
        if es.promotion == "eager":
            allowed = max(1, allowed)
        if rank >= allowed:
            problems.append(
                f"trial {trial} promoted to rung {rung} ranked {rank + 1} of {known} results "
                f"({rule}: top {allowed} go on)"
            )
    return problems


def asha_quiet_problem(job: JobRecord) -> str:
    """Invariant 5 for an asynchronous sweep: RUNNING with nothing in flight is a hang."""
    return (
        f"{job.job_id}: asynchronous sweep RUNNING with no task, result or tick in flight "
        f"({sum(job.done(r, 'train') for r in range(job.rounds))} tasks done): it can never end"
    )
