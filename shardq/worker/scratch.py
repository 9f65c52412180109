"""A task attempt's scratch directory, removed off the task's critical path.

Each attempt works in a fresh temporary directory (its downloads, ``ctx.output_dir``, checkpoints).
Removing it took 5-10 ms on this machine's ext4 (a journaled unlink and rmdir per file and folder;
a reduce's inputs are whole models), between the end of the training function and the result's
send: time every task's worker idled for nothing (issue #27: ASHA's idle target). ``task_dir``
hands the directory to one background remover instead, which the next attempt never waits for.

The remover is a plain (non-daemon) thread that ends once it has had nothing to remove for
``IDLE_EXIT_S``, so a worker that exits still removes what its last tasks left, and an idle worker
holds no thread. A directory the remover cannot delete is left, as ``TemporaryDirectory(...,
ignore_cleanup_errors=True)`` would leave it.
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PREFIX = "shardq-task-"
# The remover thread ends after this long without a directory to remove.
IDLE_EXIT_S = 1.0


class Remover:
    """Removes directories in a background thread, in the order they were handed over."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Path] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def discard(self, path: Path) -> None:
        """Remove ``path`` (a directory tree) soon, in the background."""
        self._queue.put(path)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="shardq-scratch-remover")
                self._thread.start()

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until every directory handed over so far is removed (tests; a worker's exit)."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            try:
                path = self._queue.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():  # nothing arrived meanwhile: end; the next discard restarts it
                        self._thread = None
                        return
                continue
            shutil.rmtree(path, ignore_errors=True)


REMOVER = Remover()


@contextmanager
def task_dir(remover: Remover = REMOVER) -> Iterator[Path]:
    """A fresh temporary directory for one attempt, handed to ``remover`` when the block ends."""
    path = Path(tempfile.mkdtemp(prefix=PREFIX))
    try:
        yield path
    finally:
        remover.discard(path)


__all__ = ["IDLE_EXIT_S", "PREFIX", "REMOVER", "Remover", "task_dir"]
