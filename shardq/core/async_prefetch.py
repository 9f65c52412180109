"""Prefetch for asynchronous sweeps: decided tasks waiting in each lane, so no worker waits on the
round trip between its result and its next task.

With exactly ``max_parallel`` tasks in flight, every freed worker waits one **coordination round
trip** for its next task: its result goes to the results queue, the aggregator's pass decides, the
new task goes on the task queue and a worker receives it (about 1.3 s on the loaded local cloud,
against tasks of 0.5–0.8 s in ``benchmarks/async_sweep.py``). So a pass also decides up to
``depth`` tasks beyond the running one in each lane, where ``depth`` is the lane's
bandwidth-delay product: ``ceil(round trip / median task time)``, capped at ``PREFETCH_CAP``. A
worker that finishes a task finds its lane's next one already on the queue.

Both figures are measured from the job's own records, not configured:

* a task's **overhead** is the time from its decision (``decided_at``) to its recorded outcome
  (``recorded_at``) less the worker's time on it (``duration_s``): the trip to the worker, any
  wait in the queue, and the result's trip back. The round trip is the *smallest* overhead seen
  (a task that did not wait in the queue: the pure round trip; a prefetched task's overhead
  includes its intended wait, which must not feed back into a deeper prefetch; a task whose
  worker died waited out its lease), once every lane and at least ``MIN_SAMPLES`` tasks reported
  (before that, from two overheads on, the depth is at most 1: the first wave's workers would
  otherwise wait a round trip each until four results are in, 3 % of the benchmark's worker time;
  a minimum over few samples may overstate the round trip, so no deeper). A redelivered task's
  outcome (``attempt`` > 1) is no sample: its time includes the lease its first worker held;
* the median task time is the median ``duration_s`` of the recorded outcomes.

With no measurement (the first wave, a fake clock, results faster than their claimed duration:
the unit tests) the depth is 0 and the sweep keeps exactly ``max_parallel`` in flight, as the
paper's algorithm does.

The job holds at most ``max(max_parallel, workers × (1 + depth))`` tasks in flight, ``workers``
being the fleet its results came from.

Lanes stay ``max_parallel`` FIFO message groups: ``max_parallel`` is also the job's concurrency
cap (at most one task of a group runs at a time), whatever the fleet's size. Any worker receives
any free group's next message, the oldest first, so the pass chooses lanes (``lane_slots``):

* an **empty lane** is a free worker's, as many as the fleet has free workers (the workers seen,
  plus one per busy lane that never reported: a straggler's first task is still running);
* a **prefetched** task waits behind a running task that is expected to end within the
  **horizon**, ``depth`` median tasks (at least the round trip): queued behind a longer one it
  would be decided early for nothing, and a promotion that becomes due meanwhile could no longer
  take the slot that frees first (the benchmark's eager run: a rung-2 promotion queued behind a
  3 s rung-2 task while two workers idled 2 s). Among such lanes the one expected to free soonest
  comes first (``expected_times``: what its running task has left of its rung's typical time,
  before that rung's first outcome the budget the rung adds at the median time per budget unit,
  since it became available — its decision, or its lane's previous outcome when that was recorded
  later — plus its queued tasks). Nothing is queued behind a task this pass sends (any worker may
  take it), behind a head that still waits in the queue (more busy lanes than workers: the newest
  heads), or behind a straggling lane;
* a **spare lane** (``max_parallel`` above the fleet) holds a task for whichever worker frees
  first: it is a prefetched task, one per lane ending within the horizon, less the spare lanes
  already holding one. (Filled unconditionally, ``max_parallel`` 8 on four workers kept four new
  trials queued ahead of every promotion.) Unmeasured (depth 0), every lane holds a task.

A **straggling** lane — the worker that freed it last runs over twice the typical time of its
rungs (``paces``), or its running task has run over twice the typical time of its rung plus the
round trip — goes last and gets nothing queued: a task behind a 10× worker waits ten tasks' time.
A freed straggler polls and takes the *next task that becomes available*, whatever its lane, or
one already waiting when it freed, so the pass also tracks it: until one of the tasks available
to it (``available_to``) runs long enough to show it took that one, none of them gets a task
behind it, and it is presumed idle (``Slots.idle_slow``) — for at most ``STRAGGLING`` × its own
longest task (its pace × the longest typical rung time) plus the round trip after the first task
available to it (with none, it is polling, not gone; over every task that became available after
its outcome, ended since or not: ``became_available``, a time that never moves later as fast tasks
end): a task it took would show as a straggling
lane by then, so a straggler silent that long is presumed gone (a Spot reclaim, a scale-in), and
the prefetch no longer holds back for it. Meanwhile a due promotion goes behind a fast lane's
running task (its own worker, polling at once when it ends, takes it; a task sent to an empty lane
would wake the straggler's poll first) and a new trial takes the empty lane; with no fast lane in flight the
promotion takes any slot (no later pass would come). A promotion never takes a straggling lane's
slot while a fast lane runs: that slot takes a new trial. (Three runs of the benchmark gave the
10× worker a rung-1 promotion at the sweep's end, 10.5 s where the others take 1.3 s; one a rung-2
one, 31 s.)

For **backup tasks** (``shardq.core.async_backup``) ``lane_slots`` also names the free lanes a free
worker takes now (``Slots.idle``) and the **suspects**: the tasks of each lane whose running task is
presumed on a slow worker (a straggling lane, or one a slow worker presumed idle may have taken
once it has run past its rung's typical time at the slowest fast pace, plus the round trip:
before that it may be visibly running on a fast worker), its running task and those queued
behind it, each with what it has left at the slowest measured pace. A backed-up task's losing copy
(the one whose outcome came second) keeps its lane busy and straggling until presumed ended (the
slowest pace × its rung's typical time after its decision, plus the round trip): a task decided
into that FIFO group would wait behind it. ``Slots.wake_at`` is when the earliest running task not
straggling yet would turn straggling (or a presumed-taken one a suspect): a pass that leaves slots
free asks to run again then, though no result may come before.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from shardq.core import async_backup as backup
from shardq.core.contracts import ShardResult
from shardq.core.jobstore import SweepDecision

# Tasks a lane holds at most beyond its running one (the prefetch depth's cap).
PREFETCH_CAP = 2
# Overheads measured before the prefetch trusts their minimum (and at least one per lane).
MIN_SAMPLES = 4
# Overheads from which a depth of at most 1 is trusted (the first wave's later workers).
EARLY_SAMPLES = 2
# A lane's running task that has run this many typical times of its rung is presumed straggling.
STRAGGLING = 2.0
# How long before its outcome is recorded a freed worker may already be polling for a task.
SETTLE_S = 0.25


def epoch(iso: str) -> float | None:
    """Seconds since the epoch of a ``now_iso`` stamp (None when empty or unreadable)."""
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def overheads(
    decisions: Sequence[SweepDecision],
    results: Sequence[ShardResult],
    recorded: Mapping[tuple[int, int], str],
) -> list[float]:
    """Each recorded task's decision-to-record time less its worker's time, in seconds (a
    redelivered task's, ``attempt`` > 1, left out: it includes the lease its first worker held; so
    is a backed-up task's: which copy's decision it answers is no round trip)."""
    copies = backup.backed_up(decisions)
    decided = {d.key: epoch(d.decided_at) for d in decisions if not d.backup}
    out: list[float] = []
    for r in results:
        if r.attempt > 1 or (r.round, r.shard_id) in copies:
            continue
        key = (r.round, r.shard_id)
        start, end = decided.get(key), epoch(recorded.get(key, ""))
        if start is not None and end is not None:
            out.append(end - start - r.duration_s)
    return out


def median_task_s(results: Sequence[ShardResult]) -> float:
    """The median worker time of the recorded outcomes (0 when none reported one)."""
    durations = [r.duration_s for r in results if r.duration_s > 0]
    return statistics.median(durations) if durations else 0.0


def depth(
    decisions: Sequence[SweepDecision],
    results: Sequence[ShardResult],
    recorded: Mapping[tuple[int, int], str],
    lanes: int,
    cap: int = PREFETCH_CAP,
) -> int:
    """Tasks each lane may hold beyond its running one: ``ceil(round trip / median task)``,
    capped; at most 1 until ``max(lanes, MIN_SAMPLES)`` tasks reported; 0 below ``EARLY_SAMPLES``,
    or when either figure is not positive."""
    samples = overheads(decisions, results, recorded)
    if len(samples) < EARLY_SAMPLES:
        return 0
    round_trip, task = min(samples), median_task_s(results)
    if round_trip <= 0 or task <= 0:
        return 0
    if len(samples) < max(lanes, MIN_SAMPLES):
        cap = min(cap, 1)
    return min(cap, math.ceil(round_trip / task))


@dataclass
class Slots:
    """A pass's free slots (``free``: a lane per slot, best first) and what the lane of each
    decision depends on: the straggling lanes (``slow``), whether a lane outside them has a task in
    flight (``fast_busy``: its outcome brings a later pass), the lanes empty at the pass's start,
    how many slow workers are presumed idle (``idle_slow``: polling, they take the next tasks sent
    to empty lanes) and the lanes a promotion may wait behind meanwhile (``behind``)."""

    free: list[int]
    slow: frozenset[int] = frozenset()
    fast_busy: bool = False
    empty: frozenset[int] = frozenset()
    idle_slow: int = 0
    behind: list[int] = field(default_factory=list)
    # For backup tasks (``shardq.core.async_backup``): the free lanes a free worker takes now, and
    # the tasks presumed on a slow worker (running there, or queued behind one that is).
    idle: frozenset[int] = frozenset()
    suspects: list[backup.Suspect] = field(default_factory=list)
    # When the earliest running task not straggling yet would turn straggling (a pass then may copy
    # it; results may not come before): only once a worker was measured slow.
    wake_at: float | None = None
    # The workers measured at a typical pace (not slow): who would run the trials left to draw
    # (``async_backup.due_now``).
    fast_workers: int = 0

    def backup_lanes(self) -> list[int]:
        """The free lanes a backup copy may take, best first: empty, a free worker's, not straggling."""
        return [lane for lane in self.free if lane in self.idle and lane not in self.slow]

    def promotion(self) -> int | None:
        """The lane of a due promotion, or None when it should wait for a later pass: the best
        slot outside a straggling lane (on a worker ten times slower it would end far later); while
        a slow worker idles, one behind a fast lane's running task. With no fast lane in flight
        (no later pass would come) the best slot whatever it is: the sweep must go on."""
        fast = [i for i, lane in enumerate(self.free) if lane not in self.slow]
        if self.idle_slow:
            queued = [i for i in fast if self.free[i] not in self.empty]
            if queued:
                return self.free.pop(queued[0])
            if self.behind:
                return self.behind.pop(0)
        if self.fast_busy and (self.idle_slow or not fast):
            return None
        return self.free.pop(fast[0] if fast else 0)

    def trial(self) -> int:
        """The lane of a new trial: the best slot (an idle slow worker takes it when it is empty)."""
        lane = self.free.pop(0)
        if lane in self.empty and self.idle_slow:
            self.idle_slow -= 1
        return lane


def rung_times(results: Sequence[ShardResult]) -> dict[int, float]:
    """Each rung's typical task time: the median ``duration_s`` of its recorded outcomes."""
    by_rung: dict[int, list[float]] = {}
    for r in results:
        if r.duration_s > 0:
            by_rung.setdefault(r.round, []).append(r.duration_s)
    return {rung: statistics.median(times) for rung, times in by_rung.items()}


def paces(results: Sequence[ShardResult]) -> dict[str, float]:
    """Each worker's pace: the median of its tasks' times over their rung's median (1: typical)."""
    typical = rung_times(results)
    ratios: dict[str, list[float]] = {}
    for r in results:
        if r.worker_id and r.duration_s > 0:
            ratios.setdefault(r.worker_id, []).append(r.duration_s / typical[r.round])
    return {worker: statistics.median(x) for worker, x in ratios.items()}


def expected_times(results: Sequence[ShardResult], added: Sequence[int] | None) -> Callable[[int], float]:
    """How long a task of rung ``k`` is expected to take: its rung's typical time once the rung has
    an outcome; before that, the budget the rung adds (``added[k]``) at the median time per unit of
    budget of the outcomes so far (a first rung-2 task trains 6 epochs, not rung 1's 2); without
    budgets, the median task time."""
    typical, median_s = rung_times(results), median_task_s(results)
    per_unit = [
        r.duration_s / added[r.round]
        for r in results
        if added and r.duration_s > 0 and r.round < len(added) and added[r.round] > 0
    ]
    unit = statistics.median(per_unit) if per_unit else 0.0

    def expected(rung: int) -> float:
        if rung in typical:
            return typical[rung]
        if unit and added and rung < len(added):
            return unit * added[rung]
        return median_s

    return expected


def available_to(
    heads: Sequence[tuple[float, int]], since: float, fleet: int, stragglers: frozenset[int]
) -> list[int]:
    """The lanes whose running task a worker freed at ``since`` may have taken: each head that
    became available after (less ``SETTLE_S``: it may poll before its outcome is recorded), and
    those already waiting then (``heads``: ``(available since, lane)``, the oldest first): the
    heads available before beyond what the fleet's other workers could run (one worker is the
    freed one; a straggling lane's head holds its own)."""
    before = [(at, lane) for at, lane in heads if at < since - SETTLE_S]
    others = max(0, fleet - 1 - sum(1 for _, lane in before if lane in stragglers))
    waiting = [lane for _, lane in before if lane not in stragglers][others:]
    return waiting + [lane for at, lane in heads if at >= since - SETTLE_S]


def became_available(
    decisions: Sequence[SweepDecision],
    done: set[tuple[int, int]],
    held: set[tuple[int, int, int]],
    recorded: Mapping[tuple[int, int], str] | None,
) -> list[float]:
    """When each decided task became available to a worker: its decision, or its lane's previous
    outcome when that came later (a FIFO group hands out one at a time); a task still queued behind
    a running one (or behind a losing copy in ``held``) is not available yet. A time once given
    never changes as later tasks end."""
    lanes: dict[int, list[SweepDecision]] = {}
    for d in decisions:
        lanes.setdefault(d.lane, []).append(d)
    out: list[float] = []
    for tasks in lanes.values():
        previous: float | None = -math.inf
        for d in sorted(tasks, key=lambda d: (d.seq, d.decided_at)):
            decided = epoch(d.decided_at)
            if previous is None or decided is None:
                break
            out.append(max(decided, previous))
            ended = d.key in done and d.ident not in held
            previous = epoch((recorded or {}).get(d.key, "")) if ended else None
    return out


def lane_slots(
    decisions: Sequence[SweepDecision],
    results: Sequence[ShardResult],
    lanes: int,
    depth: int,
    now: float | None,
    *,
    recorded: Mapping[tuple[int, int], str] | None = None,
    added: Sequence[int] | None = None,
) -> Slots:
    """The lanes a pass may still fill, best first, one entry per free slot (an empty lane per
    free worker, then the prefetched tasks within the horizon), and where a promotion may wait
    while a slow worker idles: each lane holds at most ``1 + depth`` tasks in flight, a straggling
    lane only its running one, and the job at most ``max(lanes, workers × (1 + depth))`` where
    ``workers`` is the fleet its results came from. The module doc says which lane is best.

    ``recorded``: the outcomes' ``recorded_at`` stamps (a lane's running task started no earlier
    than its previous task was recorded); ``added``: the budget each rung adds (the expected time of
    a rung no outcome has reported yet, ``expected_times``)."""
    done = {(r.round, r.shard_id) for r in results}
    expected = expected_times(results, added)
    pace = paces(results)
    # The slowest measured pace: where a task presumed on a slow worker is expected to run.
    slowest = max(STRAGGLING, *pace.values()) if pace else STRAGGLING
    # A running task's time includes the trips to its worker and back (the smallest overhead seen).
    trip = min(overheads(decisions, results, recorded), default=0.0) if recorded else 0.0
    # A backed-up task's losing copy still holds its lane until presumed ended (``async_backup``).
    losing = backup.losing_copies(decisions, results)
    held = {
        d.ident
        for d in losing
        if now is not None
        and (at := epoch(d.decided_at)) is not None
        and now - at < slowest * expected(d.rung) + trip
    }
    in_flight = [d for d in decisions if d.key not in done or d.ident in held]
    worker = {(r.round, r.shard_id): r.worker_id for r in results}
    count = {lane: 0 for lane in range(lanes)}
    queue: dict[int, list[SweepDecision]] = {}  # lane -> its tasks in flight, in the order they went out
    freed: dict[int, float] = {}  # lane -> when its latest outcome was recorded
    last: dict[int, tuple[str, str | None]] = {}  # lane -> (decided_at, worker) of its latest outcome
    losers = {d.ident for d in losing}
    for d in decisions:
        if d.lane not in count:
            continue
        if d.key in done and d.ident in losers and d.ident not in held:
            continue  # its lane's last outcome is not this copy's (another worker reported it)
        if d.key in done and d.ident not in held:
            if d.decided_at >= last.get(d.lane, ("", None))[0]:
                last[d.lane] = (d.decided_at, worker.get(d.key))
            at = epoch((recorded or {}).get(d.key, ""))
            if at is not None:
                freed[d.lane] = max(freed.get(d.lane, at), at)
            continue
        count[d.lane] += 1
        queue.setdefault(d.lane, []).append(d)
    for tasks in queue.values():
        tasks.sort(key=lambda d: (d.seq, d.decided_at))

    def started_at(lane: int) -> float:
        """When the lane's running task became available to a worker: its decision, or the
        lane's previous outcome when that came later (it waited in the queue until then)."""
        started = epoch(queue[lane][0].decided_at) if lane in queue else None
        return -math.inf if started is None else max(started, freed.get(lane, started))

    def running_s(lane: int) -> float:
        """How long the lane's running task has run (``started_at``; 0 without a clock)."""
        started = started_at(lane)
        return 0.0 if now is None or started == -math.inf else max(0.0, now - started)

    def free_in(lane: int, level: int) -> float:
        """Seconds until a task decided now in the lane at ``level`` starts: what its running task
        has left, its queued tasks, and the tasks this pass puts in front of it (new trials)."""
        tasks = queue.get(lane, [])
        left = max(0.0, expected(tasks[0].rung) - running_s(lane)) if tasks else 0.0
        left += sum(expected(d.rung) for d in tasks[1:])
        return left + max(0, level - count[lane]) * expected(0)

    def straggling(lane: int) -> bool:
        # The worker that freed the lane last is the one likely to take its next task; or its
        # running task has run far longer than a typical one of its rung.
        slow = pace.get(last.get(lane, ("", None))[1] or "", 1.0) > STRAGGLING
        tasks = queue.get(lane, [])
        typical = expected(tasks[0].rung) if tasks else 0.0
        return slow or (typical > 0 and running_s(lane) > STRAGGLING * typical + trip)

    stragglers = frozenset(filter(straggling, count)) | {d.lane for d in decisions if d.ident in held}
    workers = len({r.worker_id for r in results if r.worker_id})
    busy = sum(1 for lane in count if count[lane])
    # The fleet: the workers seen, and one more for each busy lane that never reported (its task
    # runs on a worker not seen yet, e.g. a straggler's first); unknown without results.
    unseen = sum(1 for lane in count if count[lane] and lane not in last)
    fleet = min(lanes, workers + unseen) if workers else lanes
    # A freed straggler takes the first task that becomes available after its outcome (any lane's:
    # a worker receives whichever group is free), or one already waiting then, so the pass tracks
    # it (the module doc).
    taken, idle_slow = set(stragglers), 0
    heads = sorted((started_at(lane), lane) for lane in queue)
    offered = became_available(decisions, done, held, recorded)
    longest = max((expected(rung) for rung in {d.rung for d in decisions}), default=0.0)
    for w in (w for w, ratio in pace.items() if ratio > STRAGGLING):
        stamps = [epoch((recorded or {}).get((r.round, r.shard_id), "")) for r in results if r.worker_id == w]
        since = max((x for x in stamps if x is not None), default=None)
        if since is None:
            continue
        after = [lane for lane in available_to(heads, since, fleet, stragglers)]
        # Presumed gone (not polling) once silent past any task it could have taken since the
        # first one was available to it (module doc); with none available yet, it is waiting.
        # The first task available to it: any that became available after its outcome, ended since
        # or not (over the tasks in flight alone it would move later as each fast task ended).
        first = min(
            [
                *(max(started_at(lane), since) for lane in after),
                *(max(at, since) for at in offered if at >= since - SETTLE_S),
            ],
            default=None,
        )
        if now is not None and first is not None and now - first > STRAGGLING * pace[w] * longest + trip:
            continue
        # It took one of the tasks available to it (which one shows once it runs long: a
        # straggling lane); until then none of them gets a task behind it, and it may still be
        # polling: the next task sent to an empty lane would be its.
        if not stragglers.intersection(after):
            taken.update(after)
            idle_slow += 1
    # An empty lane is a free worker's while the fleet has free workers; beyond that it is a spare
    # lane (``max_parallel`` above the fleet), whose task waits in the queue as a prefetched one.
    empty = sorted((lane for lane in count if not count[lane]), key=lambda lane: (lane in stragglers, lane))
    free_workers = max(0, fleet - busy)
    at_once, spare = empty[:free_workers], empty[free_workers:]
    # With more busy lanes than workers, the newest heads wait in the queue (it serves the older
    # messages first): a task behind one of them would wait its whole time, whoever takes it.
    running = {lane for _, lane in heads[:fleet]}
    # A prefetched task waits behind a running one that ends within the horizon (a measured depth
    # of round trips' worth of tasks): queued behind a longer one it would be decided early for
    # nothing, and a promotion due meanwhile could no longer take the slot that frees first.
    horizon = depth * median_task_s(results) if now is not None else math.inf
    ahead: list[int] = []
    for level in range(1, 1 + depth):  # the emptiest lanes first, one level at a time
        open_ = [
            lane
            for lane in count
            if 0 < count[lane] <= level
            and lane in running
            and lane not in taken
            and free_in(lane, level) <= horizon
        ]
        ahead.extend(sorted(open_, key=lambda lane: (free_in(lane, level), lane)))
    if depth:
        # A spare lane's queued task is taken by whichever worker frees first: it stands in for a
        # slot behind a lane ending soon, and the spare lanes holding a task already count.
        prefetch = max(0, len(ahead) - max(0, busy - fleet))
        ahead = (spare + ahead)[:prefetch]
    else:
        ahead = spare  # unmeasured: every lane holds a task (``max_parallel`` in flight)
    cap = max(lanes, workers * (1 + depth)) if workers else lanes * (1 + depth)
    room = max(0, cap - len(in_flight))
    slots = (at_once + ahead)[:room]
    # Where a promotion may wait while a slow worker idles, beyond the horizon: behind the fast
    # lane that frees first (its own worker, polling at once, takes it; an idle straggler would
    # take a task sent to an empty lane).
    behind = sorted(
        (lane for lane in running if count[lane] <= depth and lane not in taken and lane not in slots),
        key=lambda lane: (free_in(lane, count[lane]), lane),
    )

    def suspects_in(lane: int) -> list[backup.Suspect]:
        """The lane's tasks, its running one and those queued behind it (a FIFO group hands them
        out only after it), each with what it has left to its end and what a copy would take."""
        tasks = queue[lane]
        left = backup.left_s(slowest, expected(tasks[0].rung), running_s(lane))
        out = []
        for i, d in enumerate(tasks):
            left += expected(d.rung) if i else 0.0
            if d.key not in done:  # not a losing copy (``held``): its task is answered
                out.append(backup.Suspect(lane, d, left, expected(d.rung) + trip))
        return out

    # The tasks of the lanes whose running task is presumed on a slow worker (a straggling lane's,
    # a losing copy's, or one an idle slow worker may have taken), for backups (``async_backup``):
    # only once a worker measured slow (a task merely running long on an unmeasured fleet is noise,
    # or a dead worker, whose lease brings the task back).
    # A lane only presumed taken by an idle slow worker is one once its running task has run past
    # its rung's typical time at the slowest fast pace (plus the round trip): until then it may
    # be visibly running on a fast worker, and a copy would be a duplicate for nothing (a
    # benchmark run copied such a task; its copy ended 0.12 s before the original).
    fast = max((ratio for ratio in pace.values() if ratio <= STRAGGLING), default=1.0)

    def visible(lane: int) -> float:
        """When the lane's running task, were it on a fast worker, would have ended."""
        return started_at(lane) + fast * expected(queue[lane][0].rung) + trip

    presumed = {lane for lane in running & taken - stragglers if now is not None and now > visible(lane)}
    suspects = (
        [s for lane in sorted(running & (stragglers | presumed)) for s in suspects_in(lane)]
        if now is not None and slowest > STRAGGLING
        else []
    )
    turns = [
        started_at(lane) + STRAGGLING * expected(queue[lane][0].rung) + trip
        for lane in running
        if lane not in stragglers and started_at(lane) > -math.inf
    ] + [visible(lane) for lane in running & taken - stragglers - presumed if started_at(lane) > -math.inf]
    return Slots(
        slots,
        stragglers,
        fast_busy=any(count[lane] and lane not in taken for lane in count),
        fast_workers=sum(1 for ratio in pace.values() if ratio <= STRAGGLING),
        empty=frozenset(empty),
        idle_slow=idle_slow,
        behind=behind[: room - len(slots)],
        idle=frozenset(at_once),
        suspects=suspects,
        wake_at=min(turns) if turns and now is not None and slowest > STRAGGLING else None,
    )


__all__ = [
    "EARLY_SAMPLES",
    "MIN_SAMPLES",
    "PREFETCH_CAP",
    "Slots",
    "available_to",
    "depth",
    "epoch",
    "expected_times",
    "lane_slots",
    "median_task_s",
    "overheads",
    "paces",
    "rung_times",
]
