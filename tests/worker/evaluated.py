"""A workload whose module has an ``evaluate_global`` hook, which the worker's default reduce calls.

``train`` saves a float32 ``w`` (the shard id) and an integer ``steps`` (10 + the shard id), so
the reduced model shows whether the average kept each array's dtype and left the integers alone;
``evaluate_global`` reports what it finds in the model it is handed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def train(task: Any, ctx: Any) -> dict[str, Any]:
    """Save ``model.npz``: w = [k, k, k] in float32, steps = 10 + k (int64), for shard k."""
    k = task.shard_id
    np.savez(ctx.output_dir / "model.npz", w=np.full(3, k, dtype=np.float32), steps=np.array(10 + k))
    return {"metrics": {"loss": 1.0}, "num_samples": int(task.data["end"]) - int(task.data["start"])}


def evaluate_global(task: Any, model_path: Path, ctx: Any) -> Any:
    """The reduced model's first weight, its step counter and whether ``w`` is still float32;
    ``hyperparameters.broken`` returns a list instead (a broken hook)."""
    if task.hyperparameters.get("broken"):
        return [0.5]
    with np.load(model_path) as model:
        return {
            "w0": float(model["w"][0]),
            "steps": int(model["steps"]),
            "w_is_float32": float(model["w"].dtype == np.float32),
            "on_cpu": float(ctx.device == "cpu"),
        }
