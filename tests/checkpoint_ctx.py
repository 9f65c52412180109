"""A stand-in for the worker's task context, checkpoint half included, to run a training function
in-process: interrupt it at a chosen batch boundary (``ctx.should_stop``) or kill it after its k-th
checkpoint, then resume it from what it saved, as the next worker would.

The real context (shardq.worker) uploads each checkpoint to the artifact bucket; this one copies
the directory aside, which is all a training function can observe. The e2e tests
(tests/e2e/test_resume_exact.py) run the same functions through real workers.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Killed(BaseException):
    """The worker process died (SIGKILL): BaseException, so no ``except Exception`` in the loop eats it."""


@dataclass
class FakeContext:
    """What a training function gets: output and checkpoint directories, the task's latest checkpoint.

    ``stop_at``: ``should_stop`` turns True at its ``stop_at``-th reading (1-based; one reading per
    batch boundary), as when SIGTERM arrives mid-epoch. ``kill_after``: the ``kill_after``-th
    ``save_checkpoint`` completes, then the process "dies" (``Killed``).
    """

    root: Path
    attempt: int = 1
    resume_path: Path | None = None
    resume_step: int | None = None
    stop_at: int | None = None
    kill_after: int | None = None
    init_model_path: Path | None = None
    device: str = "cpu"
    proximal_mu: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)
    saved: list[int] = field(default_factory=list)
    readings: int = 0

    def __post_init__(self) -> None:
        self.output_dir = self.root / f"attempt-{self.attempt}" / "output"
        self.checkpoint_dir = self.root / f"attempt-{self.attempt}" / "checkpoint"
        self.output_dir.mkdir(parents=True)
        self.checkpoint_dir.mkdir(parents=True)
        self.logger = logging.LoggerAdapter(logging.getLogger("tests.checkpoint_ctx"), {})

    @property
    def store(self) -> Path:
        """Where the task's checkpoints are kept (shared by its attempts): ``<step>/`` each."""
        return self.root / "checkpoints"

    @property
    def should_stop(self) -> bool:
        """True from the ``stop_at``-th reading on."""
        self.readings += 1
        return self.stop_at is not None and self.readings >= self.stop_at

    def save_checkpoint(self, step: int, path: Path | None = None) -> bool:
        """Copy the checkpoint directory aside as ``step`` (the task's latest from now on)."""
        target = self.store / f"{step:012d}"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(path or self.checkpoint_dir, target)
        self.saved.append(step)
        if self.kill_after is not None and len(self.saved) >= self.kill_after:
            raise Killed(f"killed after checkpoint {len(self.saved)} (step {step})")
        return True

    def progress(self, fraction: float) -> None:
        """Progress is not observed here."""

    def fetch(self, uri: str) -> Path:
        """Only local datasets in these tests."""
        return Path(uri.removeprefix("file://"))

    def resumed(self, **options: Any) -> FakeContext:
        """The next attempt's context: the task's latest checkpoint handed over, as a worker would."""
        steps = sorted(self.store.iterdir()) if self.store.exists() else []
        latest = steps[-1] if steps else None
        return FakeContext(
            root=self.root,
            attempt=self.attempt + 1,
            resume_path=latest,
            resume_step=int(latest.name) if latest is not None else None,
            init_model_path=self.init_model_path,
            device=self.device,
            proximal_mu=self.proximal_mu,
            data=self.data,
            **options,
        )
