"""How far an asynchronous sweep can go and how far it went: each rung's task bound (ASHA's
promotions, mispromotions included), the sweep's total, and its progress counts from the job
record, for ``status``, ``watch``, ``estimate``, the dashboard and the retry's planning.

Pure reads (no store, no queue): split from ``shardq.core.async_sweep``, which decides the tasks
and re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardq.core import asha_rules
from shardq.core.contracts import TrainingRequest
from shardq.core.jobstore import JobRecord


@dataclass(frozen=True)
class AsyncProgress:
    """An asynchronous sweep's progress from its job record: tasks with an outcome (``done``, of
    them ``failed`` and ``diverged``), decided (``decided``) and at most in all (``up_to``)."""

    done: int
    failed: int
    diverged: int
    decided: int
    up_to: int

    @property
    def in_flight(self) -> int:
        """Tasks decided without an outcome yet (queued or running)."""
        return max(0, self.decided - self.done)

    def text(self) -> str:
        """``27 tasks done, 4 in flight, up to 40`` (the total is open-ended)."""
        return f"{self.done} tasks done, {self.in_flight} in flight, up to {self.up_to}"


def async_progress(job: JobRecord) -> AsyncProgress:
    """Counts of an asynchronous sweep over all its rungs (one read of the job record)."""
    rungs = range(job.rounds)
    done = sum(job.done(r, "train") for r in rungs)
    # A job that ended runs nothing more: what it did is its total (a task decided but cut short
    # by a cancel or the failure budget has no counted outcome, and none is coming).
    decided = done if job.terminal else sum(job.enqueued(r, "train") for r in rungs)
    return AsyncProgress(
        done=done,
        failed=sum(job.failed(r, "train") for r in rungs),
        diverged=sum(job.diverged(r, "train") for r in rungs),
        decided=decided,
        up_to=done if job.terminal else max(done, max_tasks(job.request)),
    )


def rung_bounds(request: TrainingRequest, first: int | None = None) -> list[int]:
    """The most tasks each rung can run: every trial at rung 0 (``first``: another count, e.g.
    ``shardq estimate --shards``), then at most ``max(1, n - eta + 1)`` of rung ``k``'s ``n`` go on.

    Not ``n // eta``: ASHA promotes a trial that ranks in the top ``n // eta`` *when it is
    promoted*, and a trial promoted early may drop out of the top later (the paper's
    "mispromotions"): with results arriving from worst to best, every result from the
    ``eta``-th on is a new best and is promoted. The sweep usually runs about halving's
    ``n // eta``; this is the bound a status can promise. With ``promotion "eager"`` every trial
    may go on (``shardq.core.asha_rules.rung_bound``)."""
    sizes = [request.task_count if first is None else first]
    es = request.early_stopping
    if es is None:
        return sizes
    for _ in es.budgets[1:]:
        sizes.append(asha_rules.rung_bound(es, sizes[-1]))
    return sizes


def max_tasks(request: TrainingRequest) -> int:
    """The most tasks the sweep can run in all (``rung_bounds`` summed)."""
    return sum(rung_bounds(request))


__all__ = ["AsyncProgress", "async_progress", "max_tasks", "rung_bounds"]
