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

Lanes stay ``max_parallel`` FIFO message groups: ``max_parallel`` is also the job's concurrency
cap (at most one task of a group runs at a time), whatever the fleet's size. A prefetched task
waits behind its lane's running task, so the pass chooses lanes (``lane_slots``): a lane with
nothing in flight first, then the lanes with the fewest in flight; among equals, the lane whose
running task is due to end soonest (started longest ago), except one that has run over twice the
median task time (probably on a straggler: a task queued behind it could wait ten times as long),
which goes last.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
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


def lane_slots(
    in_flight: Sequence[SweepDecision], lanes: int, depth: int, now: float | None, median_s: float = 0.0
) -> list[int]:
    """The lanes a pass may still fill, best first, one entry per free slot: each lane holds at
    most ``1 + depth`` tasks in flight (the module doc says which lane is best)."""
    count = {lane: 0 for lane in range(lanes)}
    oldest: dict[int, float] = {}
    for d in in_flight:
        if d.lane in count:
            count[d.lane] += 1
            at = epoch(d.decided_at)
            if at is not None:
                oldest[d.lane] = min(oldest.get(d.lane, at), at)

    def age(lane: int) -> float:
        return (now - oldest[lane]) if now is not None and lane in oldest else 0.0

    def straggling(lane: int) -> bool:
        return median_s > 0 and age(lane) > STRAGGLING * median_s

    order = sorted(count, key=lambda lane: (straggling(lane), -age(lane), lane))
    slots: list[int] = []
    for level in range(1 + depth):  # fill the emptiest lanes first, one level at a time
        slots.extend(lane for lane in order if count[lane] <= level)
    return slots


__all__ = ["MIN_SAMPLES", "PREFETCH_CAP", "depth", "epoch", "lane_slots", "median_task_s", "overheads"]
