"""Training whose global model the worker's built-in reduce scores: ``examples.linear``'s train, and
an ``evaluate_global`` hook, no ``reduce`` of its own (tests/dashboard/training.py has one).

The read-command matrix runs it under participation and a quorum, so the metrics a built-in reduce
reports are proven to reach ``status``, ``watch`` and the manifest on that path too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from examples import linear
from examples.linear import train as linear_train


def train(task: Any, ctx: Any) -> dict[str, Any]:
    """Train as examples.linear does."""
    return linear_train(task, ctx)


def evaluate_global(task: Any, model_path: Path, ctx: Any) -> dict[str, float]:
    """The reduced model's ``val_loss`` on the request's ``evaluation`` data (none without it)."""
    if not ctx.eval_dataset:
        return {}
    with np.load(model_path) as m:
        w, b = m["w"].astype(np.float64), float(m["b"])
    vx, vy = linear._validation(ctx.eval_dataset["uri"], len(w))
    return {"val_loss": float(np.mean((vx @ w + b - vy) ** 2))}
