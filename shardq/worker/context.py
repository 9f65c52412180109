"""What a training function gets besides its task: ``TaskContext`` (its data, directories, models,
device, checkpoint and stop half) and the logger adapter that tags a task's lines.

Kept apart from the worker loop (``shardq.worker.runtime``, which re-exports both) so the child
process of an isolated task (``shardq.worker.isolation``) and the tests build contexts without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from shardq.worker.devices import CPU
from shardq.worker.reduce import InputModel
from shardq.worker.stop import StopFlags, Stopped, StopSource


class TaskLogAdapter(logging.LoggerAdapter):
    """Puts job_id, round and shard_id on every line a task logs."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs.setdefault("extra", {}).update(self.extra or {})
        return msg, kwargs


@dataclass
class TaskContext:
    """What a training function gets besides the task.

    Attributes
    ----------
    data:
        The task's data slice: ``{"uri", "start", "end"}`` or ``{"uri"?, "files": [...]}``.
    work_dir:
        Scratch space, deleted after the task.
    output_dir:
        Everything saved here is uploaded under the task's ``output_prefix``.
    init_model_path:
        The round's global model, downloaded (None in round 0 without ``model.init_uri``).
    input_models:
        For a module's own ``reduce``: each shard model, downloaded (``InputModel(path, num_samples)``,
        which unpacks as a ``(path, num_samples)`` pair).
    logger:
        A logger whose lines carry job_id, round and shard_id.
    device:
        The accelerator this slot owns: ``cuda:K`` (one GPU per slot) or ``cpu``. Put the model there.
    model_path:
        The model file among the outputs. Set it when ``output_dir`` holds more than the model
        (metrics, logs, plots) and the model is not named ``model.<ext>``; it travels as the
        result's ``model_uri``, which the reduce averages.
    proximal_mu:
        FedProx's μ (the task's ``strategy.mu``; 0 otherwise): add μ/2·‖w − w_global‖² to the local
        loss, i.e. μ·(w − w_global) to its gradient, with w_global the model at ``init_model_path``.
    strategy:
        The job's server strategy as the task carries it (``{"name", **params}``; empty for FedAvg).
    eval_dataset:
        A reduce's evaluation dataset, the request's ``evaluation`` (``{"uri", "num_samples"?}``),
        which ``evaluate_global`` scores the new global model on; None on train tasks and for a job
        without one (``shardq.core.evaluation``; ``hyperparameters.test_uri`` is its deprecated
        fallback).
    checkpoint_dir:
        An empty directory for this attempt's checkpoint files: save into it, then call
        ``save_checkpoint(step)`` (``shardq.worker.checkpoints``).
    resume_path, resume_step:
        On a resumed attempt, the task's latest good checkpoint, downloaded and unpacked, and the
        step it was saved at; None on a fresh start.
    should_stop:
        True once the worker is told to stop (SIGTERM, a Spot interruption notice) or lost the
        task's lease: save a checkpoint and ``return ctx.stopped()`` (``shardq.worker.stop``).
    """

    data: dict[str, Any]
    work_dir: Path
    output_dir: Path
    init_model_path: Path | None
    logger: logging.LoggerAdapter
    fetch: Callable[[str], Path]
    progress_sink: Callable[[float], None] = lambda fraction: None
    input_models: list[InputModel] = field(default_factory=list)
    device: str = CPU
    model_path: Path | None = None
    proximal_mu: float = 0.0
    strategy: dict[str, Any] = field(default_factory=dict)
    eval_dataset: dict[str, Any] | None = None
    checkpoint_dir: Path | None = None
    resume_path: Path | None = None
    resume_step: int | None = None
    stop_flags: StopSource = field(default_factory=StopFlags)
    checkpoint_sink: Callable[[int, Path], bool] | None = None

    @property
    def should_stop(self) -> bool:
        """True when the task should save a checkpoint and return ``ctx.stopped()``."""
        return self.stop_flags.is_set()

    def save_checkpoint(self, step: int, path: Path | None = None) -> bool:
        """Upload ``path`` (default ``checkpoint_dir``) as the task's checkpoint at ``step``; the
        next attempt of this task resumes from it. False when the upload kept failing: training
        goes on, only the resume is lost."""
        source = Path(path) if path is not None else self.checkpoint_dir
        if self.checkpoint_sink is None or source is None:
            raise RuntimeError("save_checkpoint: this context has no checkpoint store (not run by a worker)")
        return self.checkpoint_sink(step, source)

    def stopped(self) -> NoReturn:
        """End the attempt after a stop (``return ctx.stopped()``): raises ``Stopped``, and the worker
        gives the task back to the queue instead of posting a result."""
        raise Stopped("the training function stopped on ctx.should_stop")

    def progress(self, fraction: float) -> None:
        """Report progress in [0, 1] (logged at most every 10 %)."""
        self.progress_sink(min(1.0, max(0.0, float(fraction))))

    def files(self) -> list[Path]:
        """The shard's files as local paths (``s3://`` ones downloaded into the work dir)."""
        return [self.fetch(f) for f in self.data.get("files", [])]
