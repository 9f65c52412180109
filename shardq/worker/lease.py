"""The task lease: how long a received task stays invisible, and the heartbeat that extends it.

A worker that vanishes (SIGKILL, an instance taken back without notice, an OOM kill) cannot give
its task back; only the lease running out can. So the lease is short and the heartbeat keeps it
short:

* the receive itself passes ``VisibilityTimeout=lease_s`` (``DEFAULT_LEASE_S``, 30 s): the first
  lease is the receive's, not the queue's default (300 s), so a task killed in its first seconds
  comes back in under a minute too;
* the heartbeat extends the visibility to ``lease_s`` every ``lease_s / 3`` (10 s), so a task
  whose worker vanished is visible again at most ``lease_s`` after the last beat: received by
  another worker within 60 s with the default (at most 30 s, plus that worker's poll);
* a failed beat is retried with backoff (1, 2, 4 … s, never past the lease) rather than waiting a
  whole interval: a throttle or a dropped connection costs nothing;
* when beats have failed for longer than the lease, the visibility has run out and another worker
  may hold the task: this worker **loses** it. ``keep_leased`` answers ``LOST``; the worker sets the
  task's stop (``ctx.should_stop``) and posts no result, instead of finishing it twice.

Cost (``shardq estimate``): one ChangeMessageVisibility per running task every ``lease_s / 3``:
a fleet of N busy slots makes N × 3 600 / 10 = 360 N calls an hour (about $0.18 per 1,000 slot-hours
at $0.50 per million FIFO requests). 30 s rather than 45 s: a SIGKILLed task's wait is the whole
lease, and at a job's tail the other workers idle through it (BENCHMARKS.md §13); the extra 120
calls per slot-hour cost $0.06 per 1,000 slot-hours.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shardq.worker.checkpoints import TaskCheckpoints

# The lease a receive asks for and the heartbeat keeps (``shardq worker --visibility-timeout``).
DEFAULT_LEASE_S = 30
# Beats per lease: the visibility is extended this many times before it would run out.
BEATS_PER_LEASE = 3
# SQS keeps a received message invisible for at most 12 hours in total.
VISIBILITY_CEILING_S = 12 * 3600
# Stop extending this long before the ceiling, so the failure is reported while we hold the task.
CEILING_MARGIN_S = 120
# The longest pause between retries of a failed beat.
MAX_RETRY_PAUSE_S = 8.0

DONE, LOST, CEILING, ABANDONED = "done", "lost", "ceiling", "abandoned"


def beat_interval(lease_s: float) -> float:
    """Seconds between heartbeats: a third of the lease (at least half a second)."""
    return max(0.5, lease_s / BEATS_PER_LEASE)


def keep_leased(
    extend: Callable[[int], None],
    lease_s: float,
    *,
    received_at: float,
    done: threading.Event,
    abandoned: threading.Event,
    logger: logging.Logger | logging.LoggerAdapter,
    clock: Callable[[], float] = time.monotonic,
    ceiling_s: float = VISIBILITY_CEILING_S,
    margin_s: float = CEILING_MARGIN_S,
) -> str:
    """Extend the task's visibility until ``done``; returns why it stopped.

    ``DONE`` (the task ended), ``ABANDONED`` (the worker gave it up), ``CEILING`` (the 12-hour
    visibility ceiling is near: the caller reports the task failed) or ``LOST`` (beats failed for
    longer than the lease: another worker may hold the task). ``extend(seconds)`` makes one
    ChangeMessageVisibility call; ``received_at`` is when the receive's own lease began;
    ``ceiling_s``/``margin_s`` are SQS's 12-hour ceiling and how long before it to give up.
    """
    interval = beat_interval(lease_s)
    last_ok = received_at
    failures = 0
    wait = interval
    while not done.wait(wait):
        if abandoned.is_set():
            return ABANDONED
        now = clock()
        left = ceiling_s - (now - received_at)
        if left <= margin_s:
            return CEILING
        try:
            extend(int(min(lease_s, left)))
        except Exception as exc:
            failures += 1
            failing_for = clock() - last_ok
            if failing_for >= lease_s:
                logger.error(
                    "heartbeat failing for %.0f s, past the %d s lease: another worker may hold the task "
                    "now; stopping it here without posting a result (%s)",
                    failing_for,
                    lease_s,
                    exc,
                )
                return LOST
            # Retry soon, but never sleep past the moment the lease runs out.
            wait = min(2.0 ** (failures - 1), MAX_RETRY_PAUSE_S, max(0.1, lease_s - failing_for - 0.5))
            logger.warning(
                "heartbeat failed (%s); retrying in %.1f s, %.0f s of the lease left",
                exc,
                wait,
                lease_s - failing_for,
            )
            continue
        if failures:
            logger.info("heartbeat recovered after %d failed attempt(s)", failures)
        last_ok, failures, wait = clock(), 0, interval
    return DONE


class TaskAbandoned(RuntimeError):
    """The worker gave the task up (shutdown or ceiling); its outcome must not be posted."""


@dataclass
class Lease:
    """One received task: its message, receive count, and the state the heartbeat keeps."""

    receipt: str
    receives: int
    received_at: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    abandoned: threading.Event = field(default_factory=threading.Event)
    # Set when heartbeats failed for longer than the lease (``shardq.worker.lease``).
    lost: threading.Event = field(default_factory=threading.Event)
    checkpoints: TaskCheckpoints | None = None
    # The received message (body and system attributes), for a graceful re-send (``.release``).
    message: dict[str, Any] = field(default_factory=dict)
    # The task's graceful releases before this message (``ShardTask.releases``).
    releases: int = 0
    _released: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def of(cls, message: dict[str, Any]) -> Lease:
        """The lease of a received message."""
        receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        return cls(receipt=message["ReceiptHandle"], receives=receives, message=message)

    @property
    def attempt(self) -> int:
        """The task's attempt number: every delivery, across its re-sent messages (a re-send
        starts at receive count 1, so the receive count alone would start again)."""
        return self.releases + self.receives

    def claim_release(self) -> bool:
        """True the first time only: a lease is handed back once."""
        with self._lock:
            first, self._released = not self._released, True
            return first
