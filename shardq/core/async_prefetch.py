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
  worker died waited out its lease), once every lane and at least ``MIN_SAMPLES`` tasks reported;
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
nothing in flight first, then the lanes with the fewest in flight; among equals, the lane whose
running task is due to end soonest (started longest ago). A **straggling** lane — the worker that
freed it last runs over twice the typical time of its rungs (``paces``: in a FIFO queue whose other
groups are busy, a freed worker takes its own lane's next task), or its running task has run over
twice the median task time — goes last and gets no prefetched task: one queued behind a 10×
worker would wait ten tasks' time while the others idle at the sweep's end. When such a lane is
empty (its worker is free) it takes a new trial, but a promotion goes to the best other slot,
even behind a running task: a rung-2 task on a 10× worker ran 31 s and ended the sweep 30 s after
everything else in the benchmark.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from shardq.core.contracts import ShardResult
from shardq.core.jobstore import SweepDecision

# Tasks a lane holds at most beyond its running one (the prefetch depth's cap).
PREFETCH_CAP = 2
# Overheads measured before the prefetch trusts their minimum (and at least one per lane).
MIN_SAMPLES = 4
# A lane's running task that has run this many median task times is presumed straggling.
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
    """Each recorded task's decision-to-record time less its worker's time, in seconds."""
    decided = {d.key: epoch(d.decided_at) for d in decisions}
    out: list[float] = []
    for r in results:
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
    capped; 0 until ``max(lanes, MIN_SAMPLES)`` tasks reported, or when either figure is not
    positive."""
    samples = overheads(decisions, results, recorded)
    if len(samples) < max(lanes, MIN_SAMPLES):
        return 0
    round_trip, task = min(samples), median_task_s(results)
    if round_trip <= 0 or task <= 0:
        return 0
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


def paces(results: Sequence[ShardResult]) -> dict[str, float]:
    """Each worker's pace: the median of its tasks' times over their rung's median (1: typical)."""
    by_rung: dict[int, list[float]] = {}
    for r in results:
        if r.duration_s > 0:
            by_rung.setdefault(r.round, []).append(r.duration_s)
    typical = {rung: statistics.median(times) for rung, times in by_rung.items()}
    ratios: dict[str, list[float]] = {}
    for r in results:
        if r.worker_id and r.duration_s > 0:
            ratios.setdefault(r.worker_id, []).append(r.duration_s / typical[r.round])
    return {worker: statistics.median(x) for worker, x in ratios.items()}


def lane_slots(
    decisions: Sequence[SweepDecision],
    results: Sequence[ShardResult],
    lanes: int,
    depth: int,
    now: float | None,
) -> Slots:
    """The lanes a pass may still fill, best first, one entry per free slot: each lane holds at
    most ``1 + depth`` tasks in flight, a straggling lane only its running one, and the job at
    most ``max(lanes, workers × (1 + depth))`` where ``workers`` is the fleet its results came
    from (lanes beyond the fleet already queue a task each). The module doc says which lane is
    best."""
    done = {(r.round, r.shard_id) for r in results}
    in_flight = [d for d in decisions if d.key not in done]
    median_s = median_task_s(results)
    pace = paces(results)
    worker = {(r.round, r.shard_id): r.worker_id for r in results}
    count = {lane: 0 for lane in range(lanes)}
    oldest: dict[int, float] = {}
    last: dict[int, tuple[str, str | None]] = {}  # lane -> (decided_at, worker) of its latest outcome
    for d in decisions:
        if d.lane not in count:
            continue
        if d.key in done:
            if d.decided_at >= last.get(d.lane, ("", None))[0]:
                last[d.lane] = (d.decided_at, worker.get(d.key))
            continue
        count[d.lane] += 1
        at = epoch(d.decided_at)
        if at is not None:
            oldest[d.lane] = min(oldest.get(d.lane, at), at)

    def age(lane: int) -> float:
        return (now - oldest[lane]) if now is not None and lane in oldest else 0.0

    def straggling(lane: int) -> bool:
        # The worker that freed the lane last is the one likely to take its next task; or its
        # running task has run far longer than a typical one.
        slow = pace.get(last.get(lane, ("", None))[1] or "", 1.0) > STRAGGLING
        return slow or (median_s > 0 and age(lane) > STRAGGLING * median_s)

    order = sorted(count, key=lambda lane: (straggling(lane), -age(lane), lane))
    slots: list[int] = []
    for level in range(1 + depth):  # fill the emptiest lanes first, one level at a time
        slots.extend(lane for lane in order if count[lane] <= level and not (level and straggling(lane)))
    workers = len({r.worker_id for r in results if r.worker_id})
    cap = max(lanes, workers * (1 + depth)) if workers else lanes * (1 + depth)
    return Slots(slots[: max(0, cap - len(in_flight))], frozenset(filter(straggling, count)))


__all__ = [
    "MIN_SAMPLES",
    "PREFETCH_CAP",
    "Slots",
    "depth",
    "epoch",
    "lane_slots",
    "median_task_s",
    "overheads",
    "paces",
]
