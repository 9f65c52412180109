"""Backup tasks for asynchronous sweeps: a straggler's running task copied onto a free fast worker,
as MapReduce (Dean & Ghemawat, OSDI 2004, §3.6) and Spark's ``spark.speculation`` do.

Why. At a sweep's end nothing is left to draw, and what remains may be one task on a slow worker:
the benchmark's best trial, drawn last by the 10× worker, ran its rung 0 for 5 s while the three
other workers had nothing to run, and its promotions could only start after it: that tail
decided each row's idle figure and its spread between runs (4.6-10.6 %, BENCHMARKS.md §19). A copy
on a fast worker ends after about one typical task.

The rule (``choose``; ``shardq.core.async_sweep.plan_pass`` asks it only when a pass has a free
slot and nothing else to give it: no promotion due, no trial left to draw or none allowed). A
lane's running task is a **suspect** when it is presumed to run on a slow worker: its lane is
straggling, it is a backed-up task's losing copy, or a slow worker presumed idle may have taken it
and it has run past its rung's typical time at the fast workers' pace (before that it may be
visibly running on a fast worker: a benchmark run copied such a task, and the copy ended 0.12 s
before the original) (``async_prefetch.lane_slots`` measures all three); so is every task queued
behind it, which the FIFO group hands out only after it. The running task's expected end is the
slowest measured pace × its rung's typical time (``async_prefetch.expected_times``) after it became
available, a queued task's that plus its own typical time; a copy's is one typical time plus the
round trip. Only once some worker was measured slow (pace over ``STRAGGLING``): on a fleet of even
workers a task that merely runs long is noise, or a dead worker, whose lease (30 s) brings the task
back. A suspect whose expected end is later than a copy's gets a **backup**: the same rung, trial,
hyperparameters, model and seed (the trial's task, sent again), in a lane a free worker takes now,
never a straggling one; the suspects that would gain most first. A task overdue even for the
slowest pace (a worker that died under its lease, or slower than any measured) is backed up too:
its end is unknown.

Before the last trials (``due_now``, asked by ``async_sweep._copy_first`` before each new trial
a pass would draw): a straggling lane's task is copied first when the copy would still end before
it had the fast workers started every trial left beforehand; a task only presumed on a slow
worker waits for the rule above (a mistaken copy holds its lane as a losing copy).

Cost. The losing copy's run is the job's too: its outcome is a duplicate, never counted, but the
aggregator adds its priced time to the job's cost (and its ``budget_usd`` guard) once per run
(``JobStore.count_copy_cost``, its ``COPY#`` item written once per copy and retry generation),
also when it reports after the job ended: backups happen at the sweep's tail, so the copy usually
wins and ends the sweep while the slow original still runs (the budget guard cannot act on that
cost any more; the job sends nothing). A copy's success reported after the other copy's failure
was counted takes the failure's place, once (``JobStore.replace_failed_copy``), while the job runs.

Exactly once. A backup is a decision like any other (``SweepDecision.backup = 1``, its own item
``ASYNC#r<rung>#<trial>#b1`` written once under the pass's conditional write): at most one per
task, and never a backup of a backup. Both copies answer the same task (``(rung, trial)``): the
store records the first outcome and counts it; the other is a duplicate (``JobStore.record``'s
conditional put returns it as such, the ``DuplicateResults`` metric counts it) and never promotes
twice (a promotion is a decision on ``(rung + 1, trial)``, written once). The copy has its own
deduplication id (``…:b1``: the FIFO queue's 5-minute window would otherwise drop it as the first
send), its own output prefix (``shard-…-b1/``: the loser never overwrites the model a promotion
continues from) and its own checkpoints (``checkpoint_keys.task_prefix``). A backup copy received
after the task's outcome is recorded is dropped unrun (``shardq.worker.drops``); a copy already
running is not stopped: a running task learns nothing from its job (the heartbeat only extends its
lease; a cancel, too, is read only before a task starts), so the losing run goes on to its end and
its cost is counted then.

The losing copy's lane. The outcome frees the task's key, but the copy that lost still runs, and a
FIFO group hands out nothing while its message is in flight: a task decided into that lane would
wait behind it. ``losing_copies`` names the copies that lost; the prefetch keeps their lanes busy
and straggling until they are presumed ended (the slowest pace × their rung's time, plus the round
trip, after they became available).

When a pass runs. Passes follow results; a task becomes a suspect at once when its lane's last
worker was measured slow, or while that worker is presumed idle, otherwise only once it has run
twice its rung's typical time, and no result may come meanwhile (in a dev run every other task
waited behind a slow worker's rung-2 task that looked fast: 26 s with three workers idle). So a
pass that leaves slots free names when the earliest running task would turn straggling
(``Slots.wake_at``, once a worker was measured slow), and the driver asks for a pass then
(``AsyncSweep.wake``: the advancer's delayed tick on the results queue, one per container while an
earlier one is due; SQS delays are whole seconds).

Rejected: keeping the slow worker's task and letting the fast workers idle (the sweep's tail, which
decides the idle figure and its spread between runs); giving a straggler no last task at all
(the last trial drawn goes to whoever polls, so a lane cannot keep it from the slow worker); and
backing up every task that runs longer than typical (copies while promotions or trials could run
take their slots: the rule runs only when nothing else can).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from shardq.core.contracts import ShardResult
from shardq.core.jobstore import SweepDecision


@dataclass(frozen=True)
class Suspect:
    """A lane's running task presumed on a slow worker: ``left_s``, what it is expected to run
    still (``math.inf`` when overdue even for the slowest pace), and ``copy_s``, what a copy on a
    fast worker would take (its rung's typical time plus the round trip)."""

    lane: int
    task: SweepDecision
    left_s: float
    copy_s: float


def backed_up(decisions: Sequence[SweepDecision]) -> frozenset[tuple[int, int]]:
    """The tasks (``(rung, trial)``) that have a backup copy."""
    return frozenset(d.key for d in decisions if d.backup)


def losing_copies(decisions: Sequence[SweepDecision], results: Sequence[ShardResult]) -> list[SweepDecision]:
    """Of each backed-up task whose outcome is recorded, the copy that did not report it (its
    result names its copy: ``ShardResult.backup``)."""
    copies = backed_up(decisions)
    won = {(r.round, r.shard_id): r.backup for r in results if (r.round, r.shard_id) in copies}
    return [d for d in decisions if d.key in won and d.backup != won[d.key]]


def choose(
    suspects: Sequence[Suspect], decisions: Sequence[SweepDecision], lanes: Sequence[int], seq: int
) -> list[SweepDecision]:
    """The backups a pass decides: each suspect that would end later than its copy, the greatest
    gain first, into ``lanes`` (free lanes a fast worker takes now, best first) while they last.
    A task is backed up at most once, and a backup never is."""
    done = backed_up(decisions)
    worth = [s for s in suspects if not s.task.backup and s.task.key not in done and s.left_s > s.copy_s]
    worth.sort(key=lambda s: (-(s.left_s - s.copy_s), s.task.key))
    out: list[SweepDecision] = []
    for suspect, lane in zip(worth, lanes, strict=False):
        if suspect.task.key in {d.key for d in out}:
            continue
        out.append(replace(suspect.task, lane=lane, seq=seq, backup=1, decided_at=""))
    return out


def due_now(suspects: Sequence[Suspect], draws_left: int, trial_s: float, fast_workers: int) -> list[Suspect]:
    """The suspects to copy *before* the trials left to draw: those whose copy would still end
    before the original if it started only once the fast workers had run the first rung of every
    trial left (``draws_left`` × ``trial_s``, shared by ``fast_workers``). A new trial's first
    result and the copy's are both one result at the suspect's rung or below, so the copy costs
    the trials drawn after it one task's wait; its outcome, and the promotions it may make due
    (with eager promotion a chain of them), come a slow task sooner. The benchmark's tails: a late
    trial drawn by the 10× worker, then its promotions, while the fast workers had drawn every
    other trial (BENCHMARKS.md §19)."""
    ahead = draws_left * trial_s / max(1, fast_workers)
    return [s for s in suspects if s.left_s > ahead + s.copy_s]


def left_s(slowest: float, typical: float, running: float) -> float:
    """What a suspect is expected to run still: the slowest pace × its rung's typical time, less
    what it ran; ``math.inf`` once it ran past even that (its end is unknown)."""
    left = slowest * typical - running
    return left if left > 0 else math.inf


__all__ = ["Suspect", "backed_up", "choose", "due_now", "left_s", "losing_copies"]
