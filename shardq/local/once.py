"""Build a kept artifact once across processes: the first to find it missing builds it, the rest wait.

The local tooling keeps what is costly to make by content (the stack's template, the cloud assembly,
the bootstrap template: ``shardq.local.resources``, ``shardq.local.deploy``). Writes were already
atomic (staged, then renamed), but processes that started together all found the artifact missing and
all built it: the test suite's xdist workers and benchmark interpreters at the start of a run on a
fresh checkout, each paying ≈ 9 s of CPU for the same template (BENCHMARKS.md §11, round 5).

``building(path)`` holds an exclusive ``flock`` on ``<path>.lock`` for the block: callers check the
artifact again inside it, so one process builds and the others read what it kept. The lock is the
kernel's (released when its holder exits, however it exits), and the builders' own timeouts bound
the wait. The lock file stays next to the artifact (an empty file; removing it would let a waiter
lock an unlinked file). Where ``fcntl`` does not exist (Windows), the block runs unlocked, as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: every process builds, as before
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def building(path: Path) -> Iterator[None]:
    """Hold the exclusive build lock of ``path`` (``<path>.lock``) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)
