"""What a task's function is handed: its ``TaskContext``, built for one attempt.

``TaskSetup`` is a part of ``shardq.worker.runtime.Worker`` (a mixin, like ``TaskFiles`` and
``TaskRelease``): the init model downloaded, ``ctx.fetch`` and progress, the slot's device, the
checkpoint and stop half (``shardq.worker.checkpoints``: the task's latest good checkpoint restored,
``ctx.save_checkpoint``, ``ctx.should_stop``), and a reduce task's evaluation dataset. Where an
attempt resumed and the task's earlier attempts go on its result (``_resume_fields``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from shardq.core.contracts import ShardTask
from shardq.core.evaluation import DEPRECATION as EVAL_DEPRECATION
from shardq.core.evaluation import eval_dataset_of
from shardq.core.planning import split_s3
from shardq.worker.artifacts import TaskFiles
from shardq.worker.checkpoints import TaskCheckpoints, context_fields
from shardq.worker.context import TaskContext
from shardq.worker.devices import SlotDevice
from shardq.worker.lease import Lease
from shardq.worker.stop import StopFlags, StopSignal

A = TypeVar("A")
B = TypeVar("B")


def both(here: Callable[[], A], there: Callable[[], B]) -> tuple[A, B]:
    """``here()`` in this thread while ``there()`` runs in another; both results. Either error is
    raised only once both ended (neither writes into the task's directory after it is given up),
    ``here``'s first."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append((True, there()))
        except BaseException as exc:  # re-raised in the caller's thread
            out.append((False, exc))

    thread = threading.Thread(target=run, name=f"{threading.current_thread().name}-setup", daemon=True)
    thread.start()
    try:
        first = here()
    except BaseException as exc:
        thread.join()
        if not out[0][0]:  # both failed: the other's error goes with this one, not lost
            exc.add_note(f"meanwhile, in {thread.name}: {out[0][1]!r}")
        raise
    thread.join()
    ok, second = out[0]
    if not ok:
        raise second
    return first, second


class TaskSetup(TaskFiles):
    """The context half of a worker: a task attempt's ``TaskContext`` and its resume fields."""

    current: Lease | None
    worker_id: str
    stop_signal: StopSignal
    device: SlotDevice

    def _context(self, task: ShardTask, tmp: Path, tlog: logging.LoggerAdapter) -> TaskContext:
        out_dir = tmp / "output"
        out_dir.mkdir()
        init = None
        if task.init_model_uri:
            uri = task.init_model_uri
            # Two independent reads: the checkpoint pointer's round trip overlaps the init model's
            # download (a promoted trial's task waits for the longer one, not both in turn).
            init, resume = both(
                lambda: self._download(uri, tmp / "init" / Path(urlparse(uri).path).name),
                lambda: self._checkpoints(task, tmp, tlog),
            )
        else:
            resume = self._checkpoints(task, tmp, tlog)
        last = [-1.0]

        def progress(fraction: float) -> None:
            if fraction - last[0] >= 0.1 or fraction >= 1.0 > last[0]:
                last[0] = fraction
                tlog.info("progress %.0f%%", fraction * 100, extra={"progress": fraction})

        return TaskContext(
            **resume,
            data=dict(task.data),
            work_dir=tmp,
            output_dir=out_dir,
            init_model_path=init,
            logger=tlog,
            fetch=self._fetcher(tmp),
            progress_sink=progress,
            device=self.device.device,
            proximal_mu=float(task.strategy.get("mu", 0.0) or 0.0),
            strategy=dict(task.strategy),
            eval_dataset=self._eval_dataset(task, tlog),
        )

    def _checkpoints(self, task: ShardTask, tmp: Path, tlog: logging.LoggerAdapter) -> dict[str, Any]:
        """The context's checkpoint and stop half (``shardq.worker.checkpoints``): the task's latest
        good checkpoint restored, the store ``save_checkpoint`` writes to, the flags of
        ``should_stop`` (the worker's stop and this lease's)."""
        lease = self.current
        store = TaskCheckpoints(
            self.s3,
            split_s3(task.output_prefix)[0],
            task,
            attempt=lease.attempt if lease is not None else 1,
            worker_id=self.worker_id,
            logger=tlog,
        )
        events = (self.stop_signal.event,) if lease is None else (self.stop_signal.event, lease.lost)
        if lease is not None:
            lease.checkpoints = store
        return context_fields(store, tmp, StopFlags(events))

    @staticmethod
    def _resume_fields(lease: Lease) -> dict[str, Any]:
        """Where this attempt started and the task's earlier attempts, for its result."""
        store = lease.checkpoints
        if store is None:
            return {}
        return {"resume_step": store.resume_step, "attempts": store.earlier_attempts()}

    @staticmethod
    def _eval_dataset(task: ShardTask, tlog: logging.LoggerAdapter) -> dict[str, Any] | None:
        """A reduce task's evaluation dataset (None for a train task): its ``eval_dataset``, else the
        deprecated ``hyperparameters.test_uri``, with a warning naming the field that replaces it."""
        if task.task_type != "reduce":
            return None
        dataset, deprecated = eval_dataset_of(task.eval_dataset, task.hyperparameters)
        if deprecated:
            tlog.warning(EVAL_DEPRECATION)
        return dataset
