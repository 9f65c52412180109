"""How many tasks a job runs in all, and how many of them have an outcome: the one definition.

``shardq status``, ``list``, ``watch`` and the dashboard all count a job's progress here, so a
successive-halving sweep (rungs of shrinking size), a ``data_parallel`` job with
``participation`` (a sample of the shards per round, plus one reduce) and a round closed early
by its quorum read the same everywhere, and never past 100 %.

* A phase that has run or runs now counts its planned tasks: the job record's (a rung a closed
  rung decided has its stored plan; a round with ``participation`` its sample).
* A phase still to come counts what it will plan: the next rungs' survivors of the current one
  (``entered // eta``, at least one), a later round's participants and its reduce.
* A round that closes at its quorum needs only the quorum's share of its participants: the
  tasks left count that share, and once the round closed, the outcomes it recorded are its size.

So with a quorum the count is what the job needs (and records), while ``planned_total`` is what
may run: every participant of every round (``shardq estimate`` prices that, the upper bound).
``status`` shows both ("35/35 recorded ...; up to 45 planned"), ``estimate`` says "up to 45
tasks ... at least 35": the same two numbers, from here (``quorum_share``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from shardq.core import fedbuff_view
from shardq.core.async_sweep import async_progress, max_tasks
from shardq.core.contracts import TrainingRequest
from shardq.core.jobstore import JobRecord
from shardq.core.operations import PhaseProgress, progress
from shardq.core.planning import participant_count


def rung_sizes(request: Any, first: int | None = None) -> list[int]:
    """Trials entering each rung of a successive-halving sweep (``[task_count]`` without one).

    ``first`` starts the chain at another rung size (the stored plan of a rung that ran); each
    rung promotes ``early_stopping.survivors`` of the trials that entered it.
    """
    n = request.task_count if first is None else first
    es = request.early_stopping
    if es is None:
        return [n]
    sizes = [n]
    for _ in es.budgets[1:]:
        sizes.append(es.survivors(sizes[-1]))
    return sizes


def round_tasks(job: JobRecord, round_no: int) -> int:
    """Train tasks round (or rung) ``round_no`` runs: planned, or projected for a later rung."""
    request = job.request
    if round_no <= job.round or job.has_plan(round_no) or request.early_stopping is None:
        return job.expected(round_no, "train")
    # A later rung: the current rung's survivors, halved on down.
    return rung_sizes(request, job.expected(job.round, "train"))[round_no - job.round]


def quorum_share(tasks: int, fraction: float) -> int:
    """Successes that close a round of ``tasks`` training tasks at a quorum of ``fraction``."""
    return min(tasks, math.ceil(fraction * tasks - 1e-9))


def needed(job: JobRecord, round_no: int, phase: str) -> int:
    """Successes that close (round, phase): every task, or the quorum's share of a round's training."""
    expected = round_tasks(job, round_no) if phase == "train" else job.expected(round_no, phase)
    quorum = job.request.quorum
    if phase == "train" and quorum is not None:
        return quorum_share(expected, quorum.fraction)
    return expected


def planned_total(job: JobRecord) -> int:
    """Tasks the plan may run in all: every participant of every round or rung, and each reduce.

    Equal to the tally's total without a quorum; with one, the upper bound (a round may close once
    its quorum's share succeeded, and then records fewer)."""
    train = sum(round_tasks(job, r) for r in range(job.rounds))
    return train + (job.rounds if job.kind == "data_parallel" else 0)


def tasks_left(job: JobRecord, current: PhaseProgress | None = None) -> int:
    """Outcomes still to come before the job ends: the current phase's and every later phase's.

    A phase closes once each of its tasks has an outcome, or a round's training once its
    quorum's share of the participants succeeded (whichever comes first); a ``data_parallel``
    round adds its reduce, a halving sweep its later rungs. Zero once the job SUCCEEDED.
    """
    if job.status == "SUCCEEDED":
        return 0
    if fedbuff_view.fedbuff.applies(job.request):
        return fedbuff_view.tasks_left(job)
    if job.request.asynchronous:  # open-ended: at most what the sweep can still run
        sweep = async_progress(job)
        return max(0, sweep.up_to - sweep.done)
    current = current or progress(job)[-1]
    outstanding = current.total - current.done - current.failed
    to_quorum = needed(job, current.round, current.phase) - current.done
    left = max(0, min(outstanding, to_quorum))
    later = range(current.round + 1, job.rounds)
    if job.kind == "data_parallel":
        left += 1 if current.phase == "train" else 0
        left += sum(needed(job, r, "train") + 1 for r in later)
    else:
        left += sum(round_tasks(job, r) for r in later)
    return left


@dataclass(frozen=True)
class Tally:
    """A job's tasks in all: ``completed`` (outcomes recorded, ``failed`` of them and ``diverged``
    of them: sweep trials with a non-finite objective, done but never ranked) and ``left``."""

    completed: int
    failed: int
    left: int
    diverged: int = 0
    # With a quorum: the tasks the plan may run (``planned_total``), which ``total`` may stay under.
    planned: int | None = None
    # An asynchronous sweep (ASHA): tasks decided without an outcome yet (queued or running).
    in_flight: int | None = None

    @property
    def total(self) -> int:
        """Tasks the job runs in all (recorded plus still to come)."""
        return self.completed + self.left

    @property
    def percent(self) -> float:
        """Share of ``total`` recorded, in percent (one decimal; 0.0 for an empty job)."""
        return round(100.0 * self.completed / self.total, 1) if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (the names the dashboard's job rows carry)."""
        return {
            "tasks_completed": self.completed,
            "tasks_failed": self.failed,
            "tasks_diverged": self.diverged,
            "tasks_total": self.total,
            "progress_pct": self.percent,
            **({"tasks_planned": self.planned} if self.planned is not None else {}),
            **({"tasks_in_flight": self.in_flight} if self.in_flight is not None else {}),
        }


def tally(job: JobRecord) -> Tally:
    """The job's tasks recorded and still to come, over every round, rung and reduce."""
    if job.request.asynchronous:
        # Open-ended: ``total`` is what the sweep may still run at most (``async_sweep.max_tasks``).
        sweep = async_progress(job)
        return Tally(
            completed=sweep.done,
            failed=sweep.failed,
            diverged=sweep.diverged,
            left=tasks_left(job),
            planned=sweep.up_to,
            in_flight=sweep.in_flight,
        )
    rows = progress(job)
    return Tally(
        completed=sum(p.done + p.failed for p in rows),
        failed=sum(p.failed for p in rows),
        diverged=sum(p.diverged for p in rows),
        left=tasks_left(job, rows[-1]),
        planned=planned_total(job) if job.request.quorum is not None else None,
    )


def plan_text(job: JobRecord) -> str:
    """What the job runs, in words: shards or trials, rounds or rungs, the sample per round."""
    return request_plan_text(job.request)


def request_plan_text(request: TrainingRequest) -> str:
    """``plan_text`` of the job ``request`` makes, before it exists (``shardq submit`` says it)."""
    n = request.task_count
    if request.kind == "sweep":
        es = request.early_stopping
        if es is None:
            return f"{n} trial(s)"
        if es.method == "asha":
            budgets = ", ".join(str(b) for b in es.budgets)
            return (
                f"{n} trial(s), ASHA over {len(es.budgets)} rungs "
                f"(eta {es.eta}; {es.budget_param} {budgets}"
                f"{'; eager promotion' if es.promotion == 'eager' else ''}), "
                f"up to {request.max_parallel} in flight, up to {max_tasks(request)} tasks"
            )
        sizes = ", ".join(str(s) for s in rung_sizes(request))
        budgets = ", ".join(str(b) for b in es.budgets)
        return (
            f"{n} trial(s), successive halving over {len(es.budgets)} rungs "
            f"({sizes} trials; {es.budget_param} {budgets})"
        )
    if request.kind == "map":
        return f"{n} shard(s)"
    per_round = participant_count(request, 0)
    sample = f", {per_round} training per round" if per_round != n else ""
    return f"{n} shard(s){sample}, {request.round_count} round(s)"
