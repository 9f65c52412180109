"""Unequal workers for ``benchmarks.async_sweep`` and ``benchmarks.async_fl`` (issue 27, item 4).

Speeds: ``speed_factors`` draws each worker's slowdown from a seeded lognormal and makes the last
one ``straggler``× slower than the median of the others (one slow or throttled box among four).
A sweep's task then sleeps ``unit_s × budget × factor`` on top of its real, cheap work. A federated
client's local epoch is *paced*: it lasts ``factor ×`` a nominal epoch (``client_paces``), its real
local SGD and then a sleep for the rest. Padding to a pace, not sleeping a fixed time after the
real SGD, keeps each client's speed what its factor says while the real SGD shares this machine's
two cores: with a fixed sleep, the fast clients' SGD, slowed 2-3× whenever several train at once
(FedBuff's clients always do), made them slower than designed and the straggler relatively faster
(issue #27 item 4: only ~4× the fast clients instead of 10×). An update whose real SGD alone
outlasts its pace is recorded (``real_s`` > ``pace_s``). The sleep holds no CPU, so four emulated
GPUs fit on two cores and every system (shardq, Optuna, Ray Tune, Flower) sees the same speeds.

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
    def task(self, worker: int, **label: Any) -> Iterator[dict[str, Any]]:
        """Time the block as ``worker``'s busy interval, labelled ``label`` (trial, rung, client...);
        it yields a dict whose entries the block adds to the row."""
        start = time.time()
        extra: dict[str, Any] = {}
        try:
            yield extra
        finally:
            row = {"worker": worker, "start": start, "end": time.time(), **label, **extra}
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


def client_paces(factors: Sequence[float], epoch_s: float) -> list[float]:
    """Seconds each client's local epoch lasts: ``factor_k × epoch_s`` (its real SGD, then a sleep
    for the rest: ``paced``)."""
    return [round(f * epoch_s, 3) for f in factors]


def paced(pace_s: float, began: float, row: dict[str, Any]) -> None:
    """Sleep until ``pace_s`` seconds after ``began`` (``time.monotonic``); note the real work's
    seconds and the pace in ``row`` (a busy interval's extra entries)."""
    real = time.monotonic() - began
    row.update(real_s=round(real, 3), pace_s=round(pace_s, 3))
    slow_down(pace_s - real)


# Set by a harness once its job ended: a client still sleeping gives its task back at once
# (``Stopped``) instead of holding the worker thread, which the harness joins, for its full delay.
ABORT: threading.Event = globals().get("ABORT") or threading.Event()


def slow_down(seconds: float) -> None:
    """Sleep ``seconds`` (the emulated slowdown); raise ``Stopped`` when ``ABORT`` is set meanwhile."""
    if ABORT.wait(max(0.0, seconds)):
        raise Stopped("the benchmark's job ended while this client was still sleeping")


def fl_train(task: Any, ctx: Any) -> dict[str, Any]:
    """One client's local SGD (``examples.mnist.fedavg.train``), paced: the update lasts
    ``hyperparameters.paces[client] × epochs`` seconds (longer only if the real SGD does)."""
    from examples.mnist import fedavg

    worker = thread_worker()
    with BUSY.task(worker, client=task.shard_id, round=task.round) as row:
        began = time.monotonic()
        out = fedavg.train(task, ctx)
        hp = task.hyperparameters
        paced(float(hp["paces"][task.shard_id]) * int(hp.get("epochs", 1)), began, row)
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
