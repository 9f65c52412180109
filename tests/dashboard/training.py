"""Training functions for the dashboard tests: real training (examples.linear) and a poisoned shard.

``reduce`` is the module's own FedAvg (the worker calls a module's ``reduce`` when it has one),
so these tests depend on the training contract alone, not on the built-in reducer's internals.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from examples import linear
from examples.linear import train as linear_train


def train(task: Any, ctx: Any) -> dict[str, Any]:
    """Train as examples.linear does."""
    return linear_train(task, ctx)


def train_reporting_grad_norm(task: Any, ctx: Any) -> dict[str, Any]:
    """Train as examples.linear does and report a ``grad_norm`` that overflows to inf from lr 0.2 up:
    a trial whose secondary metric is non-finite while its objective may stay finite."""
    out = linear_train(task, ctx)
    lr = float(task.hyperparameters.get("lr", 0.05))
    out["metrics"]["grad_norm"] = math.inf if lr >= 0.2 else lr * 10
    return out


def train_except_shard_2(task: Any, ctx: Any) -> dict[str, Any]:
    """Train as examples.linear does; shard 2 fails every attempt with a recognisable error."""
    if task.shard_id == 2:
        raise RuntimeError(f"shard {task.shard_id} of round {task.round} hit a NaN loss")
    return linear_train(task, ctx)


def reduce(task: Any, ctx: Any) -> dict[str, Any]:
    """Average the shard models weighted by their samples (FedAvg) into ``model.npz``."""
    total = sum(n for _, n in ctx.input_models)
    w, b = 0.0, 0.0
    for path, n in ctx.input_models:
        with np.load(path) as m:
            w = w + m["w"].astype(np.float64) * (n / total)
            b = b + float(m["b"]) * (n / total)
    np.savez(ctx.output_dir / "model.npz", w=w, b=np.array(b))
    # The global model's own score, as a reduce (or an evaluation hook) reports it: on the
    # dataset's held-out block, when the request names one (``evaluation``: ctx.eval_dataset).
    if not ctx.eval_dataset:
        return {"num_samples": total}
    vx, vy = linear._validation(ctx.eval_dataset["uri"], len(w))
    val_loss = float(np.mean((vx @ w + b - vy) ** 2))
    return {"metrics": {"val_loss": val_loss}, "num_samples": total}
