"""The worker fleet's scaling arithmetic as plain code (mirrors stacks/components/fleet.py).

The fleet tracks *backlog per worker*, AWS's recommended metric for queue workers::

    backlog            = visible + in-flight tasks on the task queue
    workers            = max(running, desired) worker tasks
    backlog_per_worker = backlog / workers           (the backlog itself when workers = 0)

Target tracking moves the desired count to ``ceil(current × metric / target)``; with
``current = workers`` that is ``ceil(backlog / target)``, bounded by ``[0, max_workers]``. A step
policy wakes a fleet at zero straight to that size (target tracking cannot multiply zero), and
another returns it to zero once the queue has been empty for a while. ``shardq estimate`` uses the
same function to tell how many workers a job's rounds bring up.
"""

from __future__ import annotations

import math


def backlog_per_worker(visible: float, in_flight: float, workers: float) -> float:
    """The scaling metric as CloudWatch computes it (see the module docstring)."""
    backlog = max(0.0, visible) + max(0.0, in_flight)
    return backlog / workers if workers > 0 else backlog


def desired_workers(visible: float, in_flight: float, *, target: float, max_workers: int) -> int:
    """Workers the fleet settles on for a backlog: ``min(max_workers, ceil(backlog / target))``.

    Raises
    ------
    ValueError
        When ``target`` is not positive or ``max_workers`` is negative.
    """
    if target <= 0:
        raise ValueError(f"target={target}: the backlog per worker target must be positive")
    if max_workers < 0:
        raise ValueError(f"max_workers={max_workers}: must be 0 or more")
    backlog = max(0.0, visible) + max(0.0, in_flight)
    # Round away float noise (e.g. 0.1 * 3 / 0.1) before the ceiling.
    return min(max_workers, math.ceil(round(backlog / target, 9)))


def next_desired(current: int, visible: float, in_flight: float, *, target: float, max_workers: int) -> int:
    """One target-tracking step from ``current`` workers, as Application Auto Scaling takes it.

    From zero the wake-up step policy answers (``desired_workers``); otherwise the proportional rule
    ``ceil(current × metric / target)``, which equals ``desired_workers`` once ``current`` workers run.
    """
    if current <= 0:
        return desired_workers(visible, in_flight, target=target, max_workers=max_workers)
    metric = backlog_per_worker(visible, in_flight, current)
    return max(0, min(max_workers, math.ceil(round(current * metric / target, 9))))
