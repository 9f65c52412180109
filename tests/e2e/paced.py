"""The examples' training functions, paced and watched, for the resume tests' real worker processes.

``linear`` and ``torch_mlp`` call the examples unchanged with a context whose ``should_stop``
pauses ``hyperparameters.pace_s`` at every batch boundary (so a test can interrupt a task that
would otherwise end in milliseconds; a pause changes no bit) and whose ``save_checkpoint`` and
start are logged to ``$SHARDQ_CHAOS_DIR/resume.log`` (one JSON line each, O_APPEND): the test
reads it to signal the worker at the moment it wants, and to see where each attempt resumed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def note(event: str, **fields: Any) -> None:
    """Append one event to the resume log (nothing outside a test's worker processes)."""
    if "SHARDQ_CHAOS_DIR" not in os.environ:
        return
    line = json.dumps({"event": event, "pid": os.getpid(), "t": time.time(), **fields})
    fd = os.open(Path(os.environ["SHARDQ_CHAOS_DIR"]) / "resume.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def events(chaos_dir: Path) -> list[dict[str, Any]]:
    """Every logged event, oldest first."""
    path = chaos_dir / "resume.log"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


class Paced:
    """The worker's context, slowed at batch boundaries and logged (everything else passes through)."""

    def __init__(self, ctx: Any, task: Any) -> None:
        self._ctx = ctx
        self._pace = float(task.hyperparameters.get("pace_s", 0.0))
        self._shard = task.shard_id
        self.boundaries = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    @property
    def should_stop(self) -> bool:
        """The worker's flag, read after a pause; every reading is a batch boundary."""
        time.sleep(self._pace)
        self.boundaries += 1
        note("boundary", shard=self._shard, n=self.boundaries)
        return bool(self._ctx.should_stop)

    def save_checkpoint(self, step: int, path: Path | None = None) -> bool:
        """The worker's save, logged once it returned."""
        ok = bool(self._ctx.save_checkpoint(step, path))
        note("checkpoint", shard=self._shard, step=step, ok=ok)
        return ok


def _run(fn: Any, task: Any, ctx: Any) -> dict[str, Any]:
    note("start", shard=task.shard_id, resume_step=ctx.resume_step)
    out = dict(fn(task, Paced(ctx, task)))
    note("end", shard=task.shard_id)
    return out


def linear(task: Any, ctx: Any) -> dict[str, Any]:
    """``examples.linear.train``, paced."""
    from examples import linear as example

    return _run(example.train, task, ctx)


def torch_mlp(task: Any, ctx: Any) -> dict[str, Any]:
    """``examples.torch_mlp.train``, paced."""
    from examples import torch_mlp as example

    return _run(example.train, task, ctx)
