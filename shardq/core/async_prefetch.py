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
being the fleet its results came from: with more lanes than workers, the spare lanes already
queue a task each, and a deeper prefetch would only decide tasks earlier than it must.

Lanes stay ``max_parallel`` FIFO message groups: ``max_parallel`` is also the job's concurrency
cap (at most one task of a group runs at a time), whatever the fleet's size. A prefetched task
waits behind its lane's running task, so the pass chooses lanes (``lane_slots``): a lane with
nothing in flight first, then the lanes with the fewest in flight; among equals, the lane expected
to free soonest (``expected_times``): what its running task has left of its rung's typical time
(before that rung's first outcome, the budget the rung adds at the median time per budget unit)
since it started — its decision, or its lane's previous outcome when that was recorded later —
plus its queued tasks. (Ordered by how long ago the running task was *decided*, a lane whose
rung-2 task had waited in the queue and only just started looked the best: in the benchmark's
eager run a rung-2 promotion waited 3.2 s behind such a task while two workers idled.) A **straggling** lane — the worker that freed it
last runs over twice the typical time of its rungs (``paces``: in a FIFO queue whose other groups
are busy, a freed worker takes its own lane's next task), or its running task has run over twice
the typical time of its rung — goes last and gets no prefetched task: one queued behind a 10×
worker would wait ten tasks' time while the others idle at the sweep's end. When such a lane is
empty (its worker is free) it takes a new trial, but a promotion goes to the best other slot,
even behind a running task: a rung-2 task on a 10× worker ran 31 s and ended the sweep 30 s after
everything else in the benchmark.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

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
    redelivered task's, ``attempt`` > 1, left out: it includes the lease its first worker held)."""
    decided = {d.key: epoch(d.decided_at) for d in decisions}
    out: list[float] = []
    for r in results:
        if r.attempt > 1:
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
    """A pass's free slots (``free``: a lane per slot, best first) and its straggling lanes."""

    free: list[int]
    slow: frozenset[int] = frozenset()

    def take(self, *, promotion: bool) -> int:
        """The lane of the next decision: the best slot; for a promotion the best outside a
        straggling lane when there is one (queued behind a typical task it still starts and ends
        far sooner than on a worker ten times slower)."""
        at = next((i for i, lane in enumerate(self.free) if lane not in self.slow), 0) if promotion else 0
        return self.free.pop(at)


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
    """The lanes a pass may still fill, best first, one entry per free slot: each lane holds at
    most ``1 + depth`` tasks in flight, a straggling lane only its running one, and the job at
    most ``max(lanes, workers × (1 + depth))`` where ``workers`` is the fleet its results came
    from (lanes beyond the fleet already queue a task each). The module doc says which lane is
    best.

    ``recorded``: the outcomes' ``recorded_at`` stamps (a lane's running task started no earlier
    than its previous task was recorded); ``added``: the budget each rung adds (the expected time of
    a rung no outcome has reported yet, ``expected_times``)."""
    done = {(r.round, r.shard_id) for r in results}
    in_flight = [d for d in decisions if d.key not in done]
    expected = expected_times(results, added)
    pace = paces(results)
    worker = {(r.round, r.shard_id): r.worker_id for r in results}
    count = {lane: 0 for lane in range(lanes)}
    queue: dict[int, list[SweepDecision]] = {}  # lane -> its tasks in flight, in the order they went out
    freed: dict[int, float] = {}  # lane -> when its latest outcome was recorded
    last: dict[int, tuple[str, str | None]] = {}  # lane -> (decided_at, worker) of its latest outcome
    for d in decisions:
        if d.lane not in count:
            continue
        if d.key in done:
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

    def running_s(lane: int) -> float:
        """How long the lane's running task has run: since its decision, or since the lane's
        previous task was recorded when that came later (it waited in the queue until then)."""
        if now is None or lane not in queue:
            return 0.0
        started = epoch(queue[lane][0].decided_at)
        if started is None:
            return 0.0
        return max(0.0, now - max(started, freed.get(lane, started)))

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
        return slow or (bool(tasks) and running_s(lane) > STRAGGLING * expected(tasks[0].rung) > 0)

    stragglers = frozenset(filter(straggling, count))
    slots: list[int] = []
    for level in range(1 + depth):  # fill the emptiest lanes first, one level at a time
        open_ = [lane for lane in count if count[lane] <= level and not (level and lane in stragglers)]
        slots.extend(sorted(open_, key=lambda lane: (lane in stragglers, free_in(lane, level), lane)))
    workers = len({r.worker_id for r in results if r.worker_id})
    cap = max(lanes, workers * (1 + depth)) if workers else lanes * (1 + depth)
    return Slots(slots[: max(0, cap - len(in_flight))], stragglers)


__all__ = [
    "EARLY_SAMPLES",
    "MIN_SAMPLES",
    "PREFETCH_CAP",
    "Slots",
    "depth",
    "epoch",
    "expected_times",
    "lane_slots",
    "median_task_s",
    "overheads",
    "paces",
    "rung_times",
]
