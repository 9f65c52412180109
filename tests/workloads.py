"""Training functions for worker tests: succeed, fail, take their time."""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def ok(task: Any, ctx: Any) -> dict[str, Any]:
    """Save a tiny model whose weights encode the shard; report its size."""
    n = int(task.data.get("end", 1)) - int(task.data.get("start", 0))
    np.savez(ctx.output_dir / "model.npz", w=np.full(3, float(task.shard_id)), b=np.array(1.0))
    ctx.progress(1.0)
    return {"metrics": {"loss": 1.0 / (1 + task.shard_id)}, "num_samples": n}


def boom(task: Any, ctx: Any) -> dict[str, Any]:
    """Fail every attempt."""
    raise ValueError(f"shard {task.shard_id} is poisoned")


def slow(task: Any, ctx: Any) -> dict[str, Any]:
    """Take ``hyperparameters.sleep`` seconds (default 30), reporting progress."""
    seconds = float(task.hyperparameters.get("sleep", 30))
    steps = 20
    for i in range(steps):
        time.sleep(seconds / steps)
        ctx.progress((i + 1) / steps)
    return ok(task, ctx)


def count_files(task: Any, ctx: Any) -> dict[str, Any]:
    """Report how many files the shard's data slice lists (no model: for ``map`` jobs)."""
    files = task.data.get("files", [])
    return {"metrics": {"files": float(len(files))}, "num_samples": len(files)}
