"""Unequal workers for ``benchmarks.async_sweep`` and ``benchmarks.async_fl`` (issue 27, item 4).

Speeds: ``speed_factors`` draws each worker's slowdown from a seeded lognormal and makes the last
one ``straggler``× slower than the median of the others (one slow or throttled box among four).
A sweep's task then sleeps ``unit_s × budget × factor`` on top of its real, cheap work; a federated
client sleeps ``(factor - 1) ×`` a nominal client's measured epoch after its real local SGD. The
sleep holds no CPU, so four emulated GPUs fit on this machine's two cores and every system
(shardq, Optuna, Ray Tune, Flower) sees the same speeds.

Who is slow: in a sweep, the *worker* (a GPU box runs whatever trial it is handed); in federated
learning, the *client* (its data and device are one: whoever trains client ``k`` is as slow as
client ``k``). ``Busy`` records each worker's busy intervals on the wall clock (``time.time``, so
a peer in another process is timed on the same clock), from which the idle fraction comes.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from examples import linear
from shardq.worker import Stopped

STRAGGLER = 10.0
SIGMA = 0.3


def speed_factors(
    workers: int = 4, *, seed: int = 0, sigma: float = SIGMA, straggler: float = STRAGGLER
) -> list[float]:
    """Each worker's slowdown (1 = nominal): lognormal(0, ``sigma``) at ``seed``; the last worker
    ``straggler`` × the median of the others (none when ``straggler`` is 0 or there is one worker)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    rng = np.random.default_rng([seed, 27])
    factors = [float(f) for f in np.exp(rng.normal(0.0, sigma, size=workers))]
    if straggler and workers > 1:
        factors[-1] = float(straggler * np.median(factors[:-1]))
    return [round(f, 4) for f in factors]


class Busy:
    """Busy intervals per worker, ``(worker, start, end, label)`` on ``time.time``; thread-safe.

    ``path``: also append each interval as a JSON line there (a peer's processes share one file).
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.intervals: list[dict[str, Any]] = []

    @contextmanager
    def task(self, worker: int, **label: Any) -> Iterator[None]:
        """Time the block as ``worker``'s busy interval, labelled ``label`` (trial, rung, client...)."""
        start = time.time()
        try:
            yield
        finally:
            row = {"worker": worker, "start": start, "end": time.time(), **label}
            with self.lock:
                self.intervals.append(row)
                if self.path is not None:
                    with self.path.open("a") as f:
                        f.write(json.dumps(row) + "\n")

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        """The intervals a peer's processes wrote to ``path``."""
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def idle_fraction(intervals: Sequence[dict[str, Any]], workers: int, t0: float, t1: float) -> float | None:
    """Share of ``workers × (t1 - t0)`` worker-seconds not inside a busy interval (clipped to [t0, t1])."""
    if t1 <= t0:
        return None
    busy = sum(max(0.0, min(r["end"], t1) - max(r["start"], t0)) for r in intervals)
    return max(0.0, 1.0 - busy / (workers * (t1 - t0)))


# --- shardq's side: the worker's index comes from its thread (benchmarks.rounds_local names them) --

# Module state survives a worker's reload of this module (shardq.worker.code reloads an entrypoint
# whose file changed, re-running it in the same namespace): a harness keeps reading the same objects.
BUSY: Busy = globals().get("BUSY") or Busy()
_WORKER_THREAD = re.compile(r"bench-worker-(\d+)$")


def thread_worker() -> int:
    """The index of the ``LocalRun`` worker thread running this task.

    Raises
    ------
    RuntimeError
        Outside a ``bench-worker-N`` thread (the workload times workers, so it needs to know which).
    """
    name = threading.current_thread().name
    m = _WORKER_THREAD.match(name)
    if m is None:
        raise RuntimeError(
            f"benchmarks.async_workload runs in benchmarks.rounds_local's worker threads (bench-worker-N), "
            f"not in {name!r}"
        )
    return int(m.group(1))


def sweep_train(task: Any, ctx: Any) -> dict[str, Any]:
    """A sweep trial's rung on an unequal worker: sleep ``unit_s × epochs × speeds[worker]``, then
    train as ``examples.linear.train`` does (``hyperparameters``: ``unit_s``, ``speeds``)."""
    hp = task.hyperparameters
    worker = thread_worker()
    with BUSY.task(worker, trial=task.shard_id, rung=task.round, epochs=int(hp.get("epochs", 1))):
        slow_down(float(hp["unit_s"]) * int(hp.get("epochs", 1)) * float(hp["speeds"][worker]))
        return linear.train(task, ctx)


def client_delays(factors: Sequence[float], epoch_s: float) -> list[float]:
    """Seconds each client sleeps per local epoch after its real one: ``(factor - 1) × epoch_s``
    (none below 1), so client ``k`` takes about ``factor_k`` times a nominal client's ``epoch_s``."""
    return [round(max(0.0, f - 1.0) * epoch_s, 3) for f in factors]


# Set by a harness once its job ended: a client still sleeping gives its task back at once
# (``Stopped``) instead of holding the worker thread, which the harness joins, for its full delay.
ABORT: threading.Event = globals().get("ABORT") or threading.Event()


def slow_down(seconds: float) -> None:
    """Sleep ``seconds`` (the emulated slowdown); raise ``Stopped`` when ``ABORT`` is set meanwhile."""
    if ABORT.wait(max(0.0, seconds)):
        raise Stopped("the benchmark's job ended while this client was still sleeping")


def fl_train(task: Any, ctx: Any) -> dict[str, Any]:
    """One client's local SGD (``examples.mnist.fedavg.train``), then its slowdown: it sleeps
    ``hyperparameters.delays[client] × epochs`` seconds."""
    from examples.mnist import fedavg

    worker = thread_worker()
    with BUSY.task(worker, client=task.shard_id, round=task.round):
        out = fedavg.train(task, ctx)
        delays = task.hyperparameters["delays"]
        slow_down(float(delays[task.shard_id]) * int(task.hyperparameters.get("epochs", 1)))
    return out


# Each new global model's test accuracy, when the reduce scored it (``time.time``).
EVALS: list[dict[str, Any]] = globals().get("EVALS", [])


def evaluate_global(task: Any, model_path: Path, ctx: Any) -> dict[str, float]:
    """The reduce hook of ``fl_train``'s jobs: ``examples.mnist.fedavg.evaluate_global``, logged
    in ``EVALS``."""
    from examples.mnist import fedavg

    metrics = fedavg.evaluate_global(task, model_path, ctx)
    EVALS.append({"t": time.time(), "version": task.round, **metrics})
    return metrics
