"""Lane depth: how many tasks a lane keeps queued so it never runs dry (issue #25 item 1).

A job's window is topped up by the aggregator as its results are counted, so a lane's next task
reaches the queue one *top-up round trip* after the result that freed it was sent (the worker's
send, the results queue and its batching window, the aggregator's record, its send). A lane that
keeps only the task running plus ``q`` queued runs dry whenever ``q`` tasks finish faster than
that round trip: a fixed window of 2 per lane throttled a flood of short tasks to
``window / round trip`` (3.75 tasks/s against 11.1 unwindowed, BENCHMARKS §15). So a lane's depth
is its bandwidth-delay product::

    depth = 1 (running) + ceil(round trip / task cycle)       clamped to [floor, DEPTH_CAP]

both measured from the job's own results as the aggregator counts them (``Pace.observe``):

* **round trip**: the time from a result's send (the results queue's ``SentTimestamp``, carried
  on ``Outcome.sent_at``) to the count that tops its lane up, an exponentially weighted mean;
* **task cycle**: how long one worker takes per task of the job, measured two ways:

  - *busy*: the mean of the results' ``busy_s`` (the worker's receive → result send: its checks,
    the run, the upload; each at least its ``duration_s``). It leaves out the receive and the
    delete around the task, so it is a lower bound on the cycle, and it leaves out any time the
    worker waited for work;
  - *gaps*: the smallest gap between one worker's consecutive results in a batch (never less
    than the largest ``duration_s``; with one result per worker, ``duration_s`` alone). When the
    worker found its next task at once, that is the whole cycle; when its lanes ran dry, the
    gap holds the wait too.

  Which one counts follows from who could be waiting. **On a saturated fleet** (a backlog of
  visible tasks: ``Admission.saturated``) workers find work at once, so the gaps are the true
  cycle, and the windows (scaled to the busy workers, ``Admission.fleet_factor``) hold just
  one round trip of the fleet's work: a newcomer's tasks sit one round trip from the head.
  **With idle workers** nobody waits behind a deep window, and the gaps of a starved job are
  long: a lane that ran dry made every gap long, so the job measured a long cycle, kept a
  shallow depth and stayed starved (a windowed flood ran 2.71 tasks/s against 12.08
  unwindowed, BENCHMARKS §15; the estimate grew out of its own throttle only by a few per cent
  a batch). So there the busy time counts: it does not depend on the window, and it errs deep,
  the side that fills idle workers; ``Admission.slow_start`` paces the growth there (at most
  twofold per round trip), so a deep estimate does not queue a burst before the backlog shows.
  Results of older workers (no ``busy_s``) have the gaps only.

Without a measurement (a fresh container, results without ``sent_at``), the depth is that of the
window the job's last send was held to (the job record keeps it: a top-up handed on to a fresh
container goes on as deep), else the floor (``window_per_lane``). The estimate lives in the
aggregator container and is measured anew with each batch. ``DEPTH_CAP`` bounds what one job may
queue per lane whatever the measurement (a clock skew, a stalled batch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

from shardq.core.store.records import Outcome

# The most tasks a lane may keep queued or running, whatever the measurement.
DEPTH_CAP = 64
# Weight of a new measurement in the moving means (about the last 4 batches count).
EWMA = 0.25
# Shortest task cycle believed (a clock's resolution; a no-op task still costs a receive).
MIN_CYCLE_S = 0.005
# Jobs whose pace one container keeps (the oldest are forgotten past this).
MAX_JOBS = 1000


def lane_depth(cycle_s: float, round_trip_s: float, floor: int, cap: int = DEPTH_CAP) -> int:
    """1 running + ``ceil(round_trip / cycle)`` queued behind it, within ``[floor, cap]``."""
    if not (math.isfinite(cycle_s) and math.isfinite(round_trip_s)):
        return floor
    queued = math.ceil(max(0.0, round_trip_s) / max(cycle_s, MIN_CYCLE_S))
    return max(floor, min(max(cap, floor), 1 + queued))


@dataclass
class _Estimate:
    round_trip_s: float
    # The two task cycles (module docstring); None until a batch measured it.
    busy_s: float | None
    gap_s: float | None

    def cycle(self, saturated: bool) -> float:
        """The gaps on a saturated fleet, the busy time with idle workers (each the other's
        stand-in until it is measured)."""
        first, second = (self.gap_s, self.busy_s) if saturated else (self.busy_s, self.gap_s)
        chosen = first if first is not None else second
        return MIN_CYCLE_S if chosen is None else chosen


def _mean(old: float | None, new: float | None) -> float | None:
    if new is None:
        return old
    return new if old is None else old + EWMA * (new - old)


class Pace:
    """Each job's task cycles and top-up round trip, as its counted results show them."""

    def __init__(self) -> None:
        self._jobs: dict[str, _Estimate] = {}

    def observe(self, outcomes: Iterable[Outcome], now: float) -> None:
        """Take the measurements of freshly counted train outcomes (``now``: their count)."""
        by_job: dict[str, list[Outcome]] = {}
        for o in outcomes:
            if o.result.task_type == "train" and o.source == "worker" and o.sent_at is not None:
                by_job.setdefault(o.result.job_id, []).append(o)
        for job_id, group in by_job.items():
            trip = sum(max(0.0, now - o.sent_at) for o in group if o.sent_at is not None) / len(group)
            old = self._jobs.get(job_id)
            if old is None and len(self._jobs) >= MAX_JOBS:
                self._jobs.pop(next(iter(self._jobs)))
            self._jobs[job_id] = _Estimate(
                round_trip_s=_mean(None if old is None else old.round_trip_s, trip) or 0.0,
                busy_s=_mean(None if old is None else old.busy_s, self._busy(group)),
                gap_s=_mean(None if old is None else old.gap_s, self._gaps(group)),
            )

    @staticmethod
    def _busy(group: list[Outcome]) -> float | None:
        """The batch's mean busy time per task (each at least its run); None without ``busy_s``."""
        busy = [max(o.result.busy_s, o.result.duration_s) for o in group if o.result.busy_s is not None]
        return max(math.fsum(busy) / len(busy), MIN_CYCLE_S) if busy else None

    @staticmethod
    def _gaps(group: list[Outcome]) -> float:
        """The batch's smallest gap between one worker's results, at least the task itself."""
        longest = max(o.result.duration_s for o in group)
        sent: dict[str, list[float]] = {}
        for o in group:
            if o.result.worker_id and o.sent_at is not None:
                sent.setdefault(o.result.worker_id, []).append(o.sent_at)
        gaps = []
        for times in sent.values():
            times.sort()
            gaps += [b - a for a, b in pairwise(times) if b > a]
        return max(longest, min(gaps) if gaps else longest, MIN_CYCLE_S)

    def depth(
        self, job_id: str, floor: int, *, saturated: bool = False, last: int | None = None, lanes: int = 1
    ) -> int:
        """The job's lane depth (``lane_depth``), by the cycle that counts on a ``saturated`` fleet
        or one with idle workers. Before any measurement in this container: the depth of the
        window its last send was held to (``last`` tasks over ``lanes``, as the job record keeps
        it), so a continuation handed to a fresh container goes on as deep; else ``floor``."""
        est = self._jobs.get(job_id)
        if est is None:
            prior = math.ceil(last / max(1, lanes)) if last else 0
            return max(floor, min(DEPTH_CAP, prior))
        return lane_depth(est.cycle(saturated), est.round_trip_s, floor)

    def measured(self, job_id: str, *, saturated: bool = False) -> tuple[float, float] | None:
        """(task cycle s, round trip s) as measured for ``job_id`` (the cycle that counts on a
        ``saturated`` fleet or one with idle workers); None before any."""
        est = self._jobs.get(job_id)
        return None if est is None else (est.cycle(saturated), est.round_trip_s)
