"""How long a worker's slots have had nothing to do (``shardq worker --idle-exit``)."""

from __future__ import annotations

import threading
import time


class Activity:
    """How long the worker's slots have had nothing to do, for ``--idle-exit``; shared by every slot.

    Idle time is the time *covered by polls that answered empty* since the last task (or the
    start): a poll in progress or one that failed proves nothing about the queue, so a failed poll
    restarts the count, and an unreachable endpoint never reads as "nothing to do".
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = 0
        self._since = self._confirmed = time.monotonic()

    def task_started(self) -> None:
        """A slot took a task."""
        with self._lock:
            self._busy += 1

    def task_ended(self) -> None:
        """A slot is done with its task: the idle count starts again."""
        with self._lock:
            self._busy -= 1
            self._since = self._confirmed = time.monotonic()

    def polled_empty(self) -> None:
        """A poll answered with no task: the queue had nothing up to now."""
        with self._lock:
            self._confirmed = time.monotonic()

    def unsure(self) -> None:
        """A poll failed: restart the idle count."""
        with self._lock:
            self._since = self._confirmed = time.monotonic()

    def idle_for(self) -> float:
        """Seconds of confirmed idleness of every slot (0 while one runs a task)."""
        with self._lock:
            return 0.0 if self._busy else self._confirmed - self._since
