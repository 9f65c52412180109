"""Budgets in the model-based test (issue #25, the spend guard): jobs with ``budget_usd``, workers
that drop a budget-stopped job's queued tasks and say so, and the guard's promises.

The simulated workers (``World.drop_bodies``) post the drop notice ``shardq worker`` posts
(``spend.Dropped``) for a task they drop because its job's budget is spent. After every step
(``budget_problems``), for every job whose budget stop is marked:

13. **nothing is sent after the mark**: the job's sent-task counters (``enq``) never grow after
    the step in which the mark was first seen;
14. **the overrun is bounded**: what the job counted after the mark costs at most the tasks it
    had sent and not yet counted when the mark was set (each ``TASK_COST``): running tasks, and
    queued ones a worker took on a read of the job older than the mark (the model's stale
    ``checks_job=False`` workers). A worker that reads the mark drops its task instead;
15. **it ends once every sent task is counted or dropped**: whenever the world is quiet, a
    budget-stopped job is final (or waits for a round deadline's tick, the only thing to come).

Invariant 10 (``model_invariants.cost_problems``) already holds its cost to the sum of its
counted outcomes' costs.
"""

from __future__ import annotations

from typing import Any

from shardq.core import spend
from shardq.core.jobstore import JobRecord
from tests.chaos.model_world import PRICE_PER_HOUR, World

# What one outcome costs in the model: every result reports 0.5 s (tests.helpers.result_for).
TASK_COST = round(PRICE_PER_HOUR * 0.5 / 3600 * 1_000_000)
# Budgets of 1 to 3 tasks' cost and a little: spent in the middle of a job of 2-4 shards a round.
BUDGETS_USD = (0.006, 0.011, 0.016)


def sent(job: JobRecord) -> int:
    """Tasks the job sent, over every round and phase (its ``enq`` counters)."""
    return sum(v for (kind, _, _), v in job.counters.items() if kind == "enq")


def budget_problems(world: World, jobs: list[str], sent_at_mark: dict[str, int]) -> list[str]:
    """Invariants 13-15 over ``jobs``; ``sent_at_mark`` holds each marked job's sent count as of
    the step its mark was first seen (filled here)."""
    problems: list[str] = []
    quiet = world.quiet()
    for job_id in jobs:
        job = world.engine.store.get_job(job_id)
        stop = job.budget_stop
        if stop is None:
            continue
        now = sent(job)
        before = sent_at_mark.setdefault(job_id, now)
        if now > before:
            problems.append(f"{job_id}: {now - before} task(s) sent after its budget stop was marked")
        open_at_mark = before - int(stop.get("counted", 0))
        overrun = job.cost_micro_usd - int(stop.get("cost_uusd", 0))
        if overrun > max(0, open_at_mark) * TASK_COST:
            problems.append(
                f"{job_id}: counted {overrun} micro-USD after its budget stop, more than the "
                f"{open_at_mark} task(s) it had sent and not counted then ({TASK_COST} each)"
            )
        if quiet and job.status == "RUNNING" and not world.ticks.pending(job_id):
            problems.append(
                f"{job_id}: budget-stopped, nothing in flight (outstanding {spend.outstanding(job)}), "
                "still RUNNING"
            )
    return problems


def seen_budget(seen: Any, jobs: list[str], world: World) -> None:
    """Count what the budgeted jobs reached, for the run's coverage report."""
    for job_id in jobs:
        job = world.engine.store.get_job(job_id)
        if job.budget_stop is not None:
            seen[f"budget stopped, ended {job.status}"] += 1
            seen["budget drops"] += spend.dropped(job)
