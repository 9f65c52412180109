"""The model-based test's windows, tenants and priorities (issue #25).

``SCHEDULING`` is the world's configuration: windows of one task per lane (so a model job of 2-4
shards over one or two lanes is held to its window), three tenants of unequal weights. Submits
draw a tenant and a priority (``tenancy_fields``). After every step, ``window_problems`` checks

6. **the window is never exceeded**: a RUNNING job's current round has at most its cap
   (``window_per_lane × max_parallel``) tasks sent and not counted (before any retry: a retry
   sends failed shards again on top of it, by design);
7. **the cursor never skips or repeats**: it never passes the round's planned tasks, and every
   outcome item names a task inside the cursor's prefix of the round's planned order (a task
   past it would have gone out without the cursor: sent twice, or skipped when it moved).
"""

from __future__ import annotations

from typing import Any

from shardq.core.jobstore import JobRecord

TENANTS = ("default", "vision", "speech")
SCHEDULING: dict[str, Any] = {
    "window_per_lane": 1,
    "priority_aging_seconds": 30,
    "tenants": {"default": {}, "vision": {"weight": 2}, "speech": {"weight": 1}},
}


def tenancy_fields(kind: str, seed: int) -> dict[str, Any]:
    """A submit's tenant and priority, drawn from ``seed``; a map job gets one or two lanes, so
    its window (one task per lane) holds back part of its round."""
    tenant = TENANTS[seed % len(TENANTS)]
    fields: dict[str, Any] = {"priority": (0, 500, 1000, 250)[seed % 4]}
    if kind == "map":
        fields["max_parallel"] = 1 + seed % 2
    if tenant != "default":
        fields["tenant"] = tenant
    return fields


def window_problems(world: Any, job: JobRecord, planned_order: list[int], results: set[int]) -> list[str]:
    """Invariants 6-7 for ``job``'s current round (``planned_order``: its train tasks in send
    order; ``results``: the shards with an outcome item, counted or late)."""
    if job.phase != "train" or job.round >= job.rounds:
        return []
    problems: list[str] = []
    sent = job.enqueued(job.round, "train")
    if sent > len(planned_order) and planned_order:
        problems.append(f"cursor {sent} passed the round's {len(planned_order)} planned tasks")
    inside = set(planned_order[:sent])
    stray = sorted(results - inside)
    if stray:
        problems.append(f"outcomes for shards {stray} past the cursor ({sent}): sent without it")
    cap = SCHEDULING["window_per_lane"] * job.request.max_parallel
    if job.status == "RUNNING" and job.retry_generation == 0:
        in_window = sent - job.done(job.round, "train")
        if in_window > cap:
            problems.append(f"{in_window} tasks sent and not counted, over the window's cap of {cap}")
    return problems
