"""A module with its own ``reduce``: the plain average of the shard models, scored on
``ctx.eval_dataset`` as ``tests.worker.eval_data.evaluate_global`` scores it.

With ``strategy`` fedavg it runs; with a server optimizer (FedAvgM, FedAdam, FedYogi) the worker
refuses it, since running it would drop the strategy without a word.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.worker.eval_data import score, train

__all__ = ["reduce", "train"]  # train is the entrypoint the jobs name


def reduce(task: Any, ctx: Any) -> dict[str, Any]:
    """Weighted average of ``ctx.input_models`` into ``model.npz``, scored on the evaluation data."""
    total = sum(n for _, n in ctx.input_models)
    w = np.zeros(2)
    for path, n in ctx.input_models:
        with np.load(path) as model:
            w += model["w"] * (n / total)
    out = ctx.output_dir / "model.npz"
    np.savez(out, w=w)
    metrics = score(out, ctx.eval_dataset, ctx) if ctx.eval_dataset is not None else {"no_eval": 1.0}
    return {"metrics": metrics, "num_samples": total}
