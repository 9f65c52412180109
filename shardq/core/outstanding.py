"""How many of a job's tasks are out: sent, and neither counted nor dropped (running, or queued
until a worker takes or drops them). One definition for every kind of job, read from the job
record's counters alone (``JobRecord.counters``), so the spend guard (``shardq.core.spend.ending``)
ends a budget-stopped job exactly when its last task came back, however its tasks span rounds.

* A job with rounds (``data_parallel``, ``map``, a synchronous sweep) sends only its current
  (round, phase): its enqueue cursor less that phase's counted outcomes and drops.
* An asynchronous sweep (ASHA, or a search method run result by result:
  ``shardq.core.async_sweep``) has tasks of every rung in flight at once: each decided task adds
  to its rung's enqueue counter (``enq_r<rung>_train``, in the deciding transaction), each outcome
  or drop to its rung's, so the tasks out are the sums over every rung.
* A FedBuff job's ``round`` is its model version, and its clients' tasks span versions: a client
  update ``n`` is the task ``(round n, shard client)``. Its sent tasks are the round-0 fan-out
  (``enq_r0_train``) plus every task a freed slot went to (``usent_r<n>_train``, counted once
  when the slot is handed, *before* the task is sent: ``FedBuffStore.hand``, so a crash
  between the send and its mark never leaves a task out uncounted; one counted but not marked sent
  is sent again by the next follow-up, even once the budget is spent, so no count waits for a task
  never sent); its counted ones are the recorded updates (``upd_r<version>_train`` applied, late or
  surplus, plus ``ufail_r<version>``); drops count by the task's own round, never for an update
  already recorded (a copy of its task ran: ``FedBuffStore.record_drop``). The current version's
  reduce is out as a round's is.

Why counters and not a read of the tasks: the guard runs on every ``advance`` of a stopped job,
and a read of every decision or update would cost what the job holds; the counters are on the
job record the advance read anyway.
"""

from __future__ import annotations

from shardq.core.fedbuff_params import NAME as FEDBUFF
from shardq.core.jobstore import JobRecord


def is_fedbuff(job: JobRecord) -> bool:
    """True for a FedBuff job (``strategy.name`` ``fedbuff``)."""
    strategy = job.request.strategy
    return strategy is not None and strategy.name == FEDBUFF


def _phase_out(job: JobRecord, round_no: int, phase: str) -> int:
    drops = job.counters.get(("drop", round_no, phase), 0)
    return max(0, job.enqueued(round_no, phase) - job.done(round_no, phase) - drops)


# Counters of outcomes counted: a task's (ok, failed, diverged) or a FedBuff client update's
# (``upd``: applied, late or surplus; ``ufail``: failed), in every round and phase.
COUNTED = ("ok", "fail", "div", "upd", "ufail")


def counted(job: JobRecord) -> int:
    """Outcomes the job has counted, over every round and phase (FedBuff's updates included)."""
    return sum(v for (kind, _, _), v in job.counters.items() if kind in COUNTED)


def tasks_out(job: JobRecord) -> int:
    """Tasks of ``job`` sent and neither counted nor dropped (the module docstring)."""
    if is_fedbuff(job):  # its clients' tasks (``JobRecord.train_out``) and the version's reduce
        return job.train_out() + _phase_out(job, job.round, "reduce")
    if job.request.asynchronous:
        return job.train_out()
    return _phase_out(job, job.round, job.phase)


def closes_on_its_own(job: JobRecord) -> bool:
    """True when the job's current step completed with nothing out, so it closes as usual rather
    than by the spend guard: a round's phase whose every task was counted (the next phase, given
    no task, ends it), or a FedBuff version whose reduce came back (the last one SUCCEEDS, an
    earlier one starts the next version, which sends nothing and ends it). An asynchronous sweep
    never does: with no task out and none allowed, it has nothing left to close."""
    if job.request.asynchronous:
        return False
    if is_fedbuff(job):
        return job.phase == "reduce" and job.done(job.round, "reduce") >= 1
    return job.done(job.round, job.phase) >= job.expected(job.round, job.phase)


__all__ = ["COUNTED", "closes_on_its_own", "counted", "is_fedbuff", "tasks_out"]
