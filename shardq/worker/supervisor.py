"""Run worker threads in one process and shut them down the way spot interruptions need.

First SIGTERM/SIGINT: stop polling, give running tasks ``grace_s`` to finish, then release
the ones still running (visibility 0) so another worker takes them at once; exit 0.
A second signal exits immediately.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType

from shardq.worker.runtime import Worker

log = logging.getLogger("shardq.worker")


def serve(workers: Sequence[Worker], *, grace_s: float = 20.0, max_tasks: int | None = None) -> int:
    """Run ``workers`` until a signal (or ``max_tasks`` each); returns the exit code."""
    stop = threading.Event()
    signals: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals.append(signum)
        if len(signals) > 1:
            log.warning("second signal: exiting now")
            os._exit(130)
        log.info("%s: stopping; running tasks get %.0f s to finish", signal.Signals(signum).name, grace_s)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    threads = [
        threading.Thread(
            target=w.run, args=(stop,), kwargs={"max_tasks": max_tasks}, daemon=True, name=f"worker-{i}"
        )
        for i, w in enumerate(workers)
    ]
    try:
        for t in threads:
            t.start()
        while not stop.is_set() and any(t.is_alive() for t in threads):
            stop.wait(0.2)
        if signals:
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and any(w.current is not None for w in workers):
                time.sleep(0.1)
            released = sum(w.release_current() for w in workers)
            if released:
                log.info("released %d running task(s) back to the queue", released)
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
