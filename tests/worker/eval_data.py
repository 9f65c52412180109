"""Workloads that score the global model on the job's evaluation dataset (request ``evaluation``).

``train`` saves w = [k, k] for shard k and reports whether its context carried an evaluation
dataset (a client must never see the server's test set). ``evaluate_global`` downloads
``ctx.eval_dataset["uri"]`` (an ``.npz`` with ``x`` and ``y``) and reports the global model's
squared error on it, so the metric depends on the data the request named.
(``tests.worker.eval_reduce`` is the same with a ``reduce`` of its own.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def train(task: Any, ctx: Any) -> dict[str, Any]:
    """Save ``model.npz`` with w = [k, k]; ``saw_eval`` is 1 when the train context had a dataset."""
    k = float(task.shard_id)
    np.savez(ctx.output_dir / "model.npz", w=np.array([k, k]))
    saw = float(getattr(ctx, "eval_dataset", None) is not None)
    return {"metrics": {"saw_eval": saw}, "num_samples": int(task.data["end"]) - int(task.data["start"])}


def score(model_path: Path, eval_dataset: dict[str, Any], ctx: Any) -> dict[str, float]:
    """The model's mean squared error on the evaluation data, and the size the request declared."""
    with np.load(model_path) as model:
        w = model["w"]
    with np.load(ctx.fetch(eval_dataset["uri"])) as data:
        x, y = data["x"], data["y"]
    return {
        "eval_mse": float(np.mean((x @ w - y) ** 2)),
        "eval_rows": float(len(y)),
        "declared_samples": float(eval_dataset.get("num_samples", -1)),
    }


def evaluate_global(task: Any, model_path: Path, ctx: Any) -> dict[str, float]:
    """Score the reduced model on ``ctx.eval_dataset``; ``{"no_eval": 1}`` when the job has none."""
    if ctx.eval_dataset is None:
        return {"no_eval": 1.0}
    return score(model_path, ctx.eval_dataset, ctx)
