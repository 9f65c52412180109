"""The model-based test's windows, tenants and priorities (issue #25).

``SCHEDULING`` is the world's configuration: windows of one task per lane (so a model job of 2-4
shards over one or two lanes is held to its window), three tenants of unequal weights. Submits
draw a tenant and a priority (``tenancy_fields``). After every step, ``window_problems`` checks

6. **the window is never exceeded**: a RUNNING job's current round has at most its cap
   (the deepest lane ``ModelPace`` allows × ``max_parallel``) tasks sent and not counted (before
   any retry: a retry sends failed shards again on top of it, by design);
7. **the cursor never skips or repeats**: it never passes the round's planned tasks, and every
   outcome item names a task inside the cursor's prefix of the round's planned order (a task
   past it would have gone out without the cursor: sent twice, or skipped when it moved).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from shardq.core.depth import Pace
from shardq.core.jobstore import JobRecord
from shardq.core.store.records import Outcome

TENANTS = ("default", "vision", "speech")
SCHEDULING: dict[str, Any] = {
    "window_per_lane": 1,
    "priority_aging_seconds": 30,
    "tenants": {"default": {}, "vision": {"weight": 2}, "speech": {"weight": 1}},
}


# The deepest lane ModelPace gives a measured job (tasks queued or running per lane).
MODEL_MAX_DEPTH = 3


class ModelPace(Pace):
    """The lane depth (``shardq.core.depth``) without the wall clock: a real ``Pace`` measures
    each job's round trip from SQS timestamps, so the windows, and every draw after them, would
    change with the machine's load (hypothesis saw that as a flaky failure). Here a measured
    job's depth follows its counted worker outcomes (1, 2, 3, 1, ...), so windows grow and shrink
    the same way on every run; before any measurement the real rule holds (the job's last
    window, else the floor). ``tests/core/test_depth.py`` tests the real measurement."""

    def __init__(self) -> None:
        super().__init__()
        self.counted: Counter[str] = Counter()

    def observe(self, outcomes: Iterable[Outcome], now: float) -> None:
        for o in outcomes:
            if o.result.task_type == "train" and o.source == "worker":
                self.counted[o.result.job_id] += 1

    def depth(
        self, job_id: str, floor: int, *, saturated: bool = False, last: int | None = None, lanes: int = 1
    ) -> int:
        n = self.counted.get(job_id, 0)
        if n == 0:
            return super().depth(job_id, floor, saturated=saturated, last=last, lanes=lanes)
        return max(floor, 1 + n % MODEL_MAX_DEPTH)


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
    cap = max(SCHEDULING["window_per_lane"], MODEL_MAX_DEPTH) * job.request.max_parallel
    if job.status == "RUNNING" and job.retry_generation == 0:
        in_window = sent - job.done(job.round, "train")
        if in_window > cap:
            problems.append(f"{in_window} tasks sent and not counted, over the window's cap of {cap}")
    return problems
