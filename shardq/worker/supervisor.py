"""Run worker slots (threads) in one process, decide when the process is done, and say how it went.

First SIGTERM/SIGINT: stop polling, give running tasks ``grace_s`` to finish, then release
the ones still running (visibility 0) so another worker takes them at once; exit 0.
A second signal exits immediately (130).

The worker also stops on its own, exiting 0, when

* every slot handled ``max_tasks`` tasks;
* ``idle_exit_s`` passed with no slot holding a task and every poll answered (empty): a failing
  poll restarts the idle clock, so an unreachable endpoint is never mistaken for an empty queue;
* every job in ``JobWatch`` is finished (SUCCEEDED, FAILED or CANCELLED); tasks still running
  are let finish, no new one is taken.

Exit codes (``EXIT_*``): 0 as above; 4 a fatal AWS error (access denied, a missing queue, table or
bucket, bad credentials), after releasing the running tasks; 1 a slot died of an unexpected error.
A transient AWS error never ends a slot (see ``Worker.run``), so a worker never shrinks silently.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

from shardq.core.contracts import TERMINAL_STATUSES
from shardq.core.jobstore import JobStore
from shardq.worker.aws import describe, is_fatal
from shardq.worker.runtime import Worker

log = logging.getLogger("shardq.worker")

EXIT_OK = 0
EXIT_SLOT_DIED = 1
EXIT_FATAL = 4
EXIT_SECOND_SIGNAL = 130


@dataclass
class JobWatch:
    """The jobs a worker was started for (``--job-id``): it exits once all of them are finished.

    The task queue is shared by every job and cannot be filtered by job: until then the worker
    runs whatever task it receives (handing other jobs' tasks back would burn their receive
    count toward the DLQ). Statuses are read every ``every_s`` through ``JobStore.status_of``.
    """

    store: JobStore
    job_ids: Sequence[str]
    every_s: float = 5.0
    _next: float = 0.0
    _warned: set[str] = field(default_factory=set)

    def finished(self) -> bool:
        """True when every watched job is finished (read at most every ``every_s``)."""
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.every_s
        for job_id in self.job_ids:
            try:
                status = self.store.status_of(job_id)
            except Exception as exc:
                if is_fatal(exc):
                    raise
                log.warning("cannot read job %s's status (%s); asking again later", job_id, describe(exc))
                return False
            if status is None and job_id not in self._warned:
                self._warned.add(job_id)
                log.warning("no job %s in table %s (yet); waiting for it", job_id, self.store.table)
            if status not in TERMINAL_STATUSES:
                return False
        return True


@dataclass
class _Slot:
    """One worker thread and how it ended."""

    worker: Worker
    thread: threading.Thread | None = None
    died: BaseException | None = None

    def run(self, stop: threading.Event, max_tasks: int | None) -> None:
        try:
            self.worker.run(stop, max_tasks=max_tasks)
        except BaseException as exc:  # recorded: the supervisor turns it into exit 1
            self.died = exc
            log.critical("worker slot %s died: %s", self.worker.worker_id, describe(exc), exc_info=True)


def serve(
    workers: Sequence[Worker],
    *,
    grace_s: float = 20.0,
    max_tasks: int | None = None,
    idle_exit_s: float | None = None,
    watch: JobWatch | None = None,
    tick_s: float = 0.2,
) -> int:
    """Run ``workers`` (one thread each) until a signal, a stop condition or a fatal error.

    Returns
    -------
    int
        The exit code: ``EXIT_OK``, ``EXIT_FATAL`` or ``EXIT_SLOT_DIED`` (module docstring).
    """
    stop = threading.Event()
    signals: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals.append(signum)
        if len(signals) > 1:
            log.warning("second signal: exiting now")
            os._exit(EXIT_SECOND_SIGNAL)
        log.info("%s: stopping; running tasks get %.0f s to finish", signal.Signals(signum).name, grace_s)
        # The stop first: the watch loop must see a signal as the reason, not the per-worker stop
        # requests below (those alone mean a Spot notice). Running training functions see the
        # request as ctx.should_stop: they checkpoint and return early.
        stop.set()
        for w in workers:
            w.stop_signal.request(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    slots = [_Slot(w) for w in workers]
    for i, slot in enumerate(slots):
        slot.thread = threading.Thread(
            target=slot.run, args=(stop, max_tasks), daemon=True, name=f"worker-{i}"
        )
    try:
        for slot in slots:
            assert slot.thread is not None
            slot.thread.start()
        reason = _watch(slots, stop, idle_exit_s, watch, tick_s)
        stop.set()
        abrupt = bool(signals) or reason in ("fatal", "slot died", "stop requested")
        if abrupt:
            _release_after_grace(workers, grace_s)
        # Otherwise slots finish the long poll they are in (a task received after the stop is
        # handed back) and the task they run. After a release, a training function still running
        # is cut off with the process: its outcome would not be posted anyway.
        for slot in slots:
            assert slot.thread is not None
            slot.thread.join(timeout=1.0 if abrupt else None)
        return _exit_code(slots, reason)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _watch(
    slots: Sequence[_Slot],
    stop: threading.Event,
    idle_exit_s: float | None,
    watch: JobWatch | None,
    tick_s: float,
) -> str:
    """Wait for a reason to stop; returns it."""
    # Slots built together share one Activity; slots built apart are idle only when all are.
    activities = list({id(s.worker.activity): s.worker.activity for s in slots}.values())
    while not stop.wait(tick_s):
        if any(s.worker.fatal is not None for s in slots):
            return "fatal"
        if any(s.worker.stop_signal.is_set() for s in slots):  # a Spot notice (shardq.worker.stop)
            return "stop requested"
        if any(s.died is not None for s in slots):
            return "slot died"
        if not any(s.thread is not None and s.thread.is_alive() for s in slots):
            return "done"
        if idle_exit_s is not None and min(a.idle_for() for a in activities) >= idle_exit_s:
            log.info("idle for %.0f s with nothing to do: exiting", idle_exit_s, extra={"reason": "idle"})
            return "idle"
        try:
            if watch is not None and watch.finished():
                log.info("jobs %s are finished: exiting", ", ".join(watch.job_ids), extra={"reason": "jobs"})
                return "jobs finished"
        except Exception as exc:  # fatal: the table cannot be read at all
            log.error("cannot read the watched jobs: %s", describe(exc))
            slots[0].worker.fatal = exc
            return "fatal"
    return "signal"


def _release_after_grace(workers: Sequence[Worker], grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(w.current is not None for w in workers):
        time.sleep(0.1)
    released = sum(w.release_current() for w in workers)
    if released:
        log.info("released %d running task(s) back to the queue", released)


def _exit_code(slots: Sequence[_Slot], reason: str) -> int:
    fatal = [s.worker.fatal for s in slots if s.worker.fatal is not None]
    if fatal:
        log.error("exiting %d: %s", EXIT_FATAL, describe(fatal[0]), extra={"exit_code": EXIT_FATAL})
        return EXIT_FATAL
    died = [s for s in slots if s.died is not None]
    if died:
        log.error(
            "exiting %d: %d of %d slot(s) died",
            EXIT_SLOT_DIED,
            len(died),
            len(slots),
            extra={"exit_code": EXIT_SLOT_DIED},
        )
        return EXIT_SLOT_DIED
    log.info("exiting 0 (%s)", reason, extra={"exit_code": EXIT_OK, "reason": reason})
    return EXIT_OK
