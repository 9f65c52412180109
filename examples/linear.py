"""Linear regression trained with minibatch SGD, sharded by sample index.

A real, small training job: every shard trains from the round's global model on its
own slice of the data, saves ``model.npz``, and the rounds' FedAvg converges to the
centralized least-squares solution. Deterministic for a given request.

Datasets:

* ``s3://bucket/key.npz`` (or a local ``.npz`` path): arrays ``x`` (n × d) and ``y`` (n),
  e.g. written by ``write_dataset``; the worker downloads it once per process.
* ``synthetic://linear?dim=8&noise=0.05&seed=7``: generated on the fly; sample ``i`` is
  the same whatever the sharding (samples come in fixed blocks of 1,024).

Checkpoints (``examples.checkpointing``): every ``hyperparameters.checkpoint_every`` batches
(1,000 by default; an epoch of a shard is often only a few batches) and whenever the worker says
stop (``ctx.should_stop``), the weights, the epoch, the batch and the generator's state at the
epoch's start; a resumed attempt ends with exactly the bits of an uninterrupted one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np

from examples import checkpointing
from shardq.worker import Stopped

BLOCK = 1024
VALIDATION_BLOCK = 10**9
# Batches between checkpoints (``hyperparameters.checkpoint_every`` overrides; 0: only when stopped).
CHECKPOINT_STEPS = 1000
CHECKPOINT = "weights.npz"


def _params(uri: str | None) -> tuple[int, float, int]:
    q = parse_qs(urlparse(uri or "synthetic://linear").query)
    return int(q.get("dim", ["8"])[0]), float(q.get("noise", ["0.05"])[0]), int(q.get("seed", ["7"])[0])


def true_weights(uri: str | None) -> tuple[np.ndarray, float]:
    """The weights and bias the data was generated with."""
    dim, _, seed = _params(uri)
    rng = np.random.default_rng([seed, 0xC0FFEE])
    return rng.normal(size=dim), float(rng.normal())


def _block(uri: str | None, block: int) -> tuple[np.ndarray, np.ndarray]:
    dim, noise, seed = _params(uri)
    w, b = true_weights(uri)
    rng = np.random.default_rng([seed, block])
    x = rng.normal(size=(BLOCK, dim))
    return x, x @ w + b + noise * rng.normal(size=BLOCK)


_FILES: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def write_dataset(path: Path, num_samples: int, dim: int = 8, noise: float = 0.05, seed: int = 7) -> Path:
    """Write an ``.npz`` regression dataset (the synthetic generator's samples) to ``path``."""
    uri = f"synthetic://linear?dim={dim}&noise={noise}&seed={seed}"
    x, y = load_range(uri, 0, num_samples)
    np.savez(path, x=x, y=y)
    return path


def load_range(
    uri: str | None, start: int, end: int, fetch: Callable[[str], Path] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Samples ``[start, end)`` of the dataset; ``fetch`` turns an ``s3://`` URI into a local file."""
    if uri and (uri.startswith("s3://") or uri.endswith(".npz")):
        if uri not in _FILES:
            path = fetch(uri) if fetch is not None else Path(uri.removeprefix("file://"))
            with np.load(path) as data:
                _FILES[uri] = (data["x"], data["y"])
        x, y = _FILES[uri]
        return x[start:end], y[start:end]
    xs, ys = [], []
    for block in range(start // BLOCK, (end - 1) // BLOCK + 1):
        x, y = _block(uri, block)
        lo = max(start - block * BLOCK, 0)
        hi = min(end - block * BLOCK, BLOCK)
        xs.append(x[lo:hi])
        ys.append(y[lo:hi])
    return np.concatenate(xs), np.concatenate(ys)


def _validation(uri: str | None, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Validation samples: a separately generated block for synthetic data; for a file dataset,
    its last 1,024 samples (which the last shard also trains on: a file carries no held-out split)."""
    if uri and uri in _FILES:
        x, y = _FILES[uri]
        return x[-BLOCK:], y[-BLOCK:]
    return _block(uri, VALIDATION_BLOCK)


def _mse(w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((x @ w + b - y) ** 2))


def train(task: Any, ctx: Any) -> dict[str, Any]:
    """Train from the round's global model on this shard; save ``model.npz``."""
    uri = task.data.get("uri")
    _, _, seed = _params(uri)
    hp = task.hyperparameters
    lr, epochs, batch = float(hp.get("lr", 0.05)), int(hp.get("epochs", 1)), int(hp.get("batch_size", 64))
    l2 = float(hp.get("l2", 0.0))
    x, y = load_range(uri, int(task.data["start"]), int(task.data["end"]), getattr(ctx, "fetch", None))
    dim = x.shape[1]
    if ctx.init_model_path is not None:
        with np.load(ctx.init_model_path) as m:
            w, b = m["w"].astype(np.float64), float(m["b"])
    else:
        w, b = np.zeros(dim), 0.0
    # FedProx (strategy fedprox): the loss gains mu/2 * ||(w, b) - (w_global, b_global)||^2, so the
    # gradient gains mu * (w - w_global): local steps stay near the round's global model.
    mu = float(getattr(ctx, "proximal_mu", 0.0) or 0.0)
    w_global, b_global = w.copy(), b
    rng = np.random.default_rng([seed, task.round, task.shard_id])
    # An epoch here is milliseconds: checkpoint on a batch count (and whenever told to stop), not per epoch.
    every = checkpointing.Every.of(hp, default_steps=CHECKPOINT_STEPS, epoch_end=False)
    first_epoch, first_batch, step = 0, 0, 0
    position = checkpointing.resume_position(ctx)
    if position is not None:  # a resumed attempt: the weights, the generator and the place in the data
        with np.load(Path(ctx.resume_path) / CHECKPOINT) as m:
            w, b = m["w"].astype(np.float64), float(m["b"])
        rng.bit_generator.state = position["rng"]
        first_epoch, first_batch, step = int(position["epoch"]), int(position["batch"]), int(position["step"])
    batches = -(-len(y) // batch)
    for epoch in range(first_epoch, epochs):
        # The generator as it was before this epoch's order was drawn: what a checkpoint stores, so a
        # resumed attempt draws the same order again and skips the batches already done.
        at_epoch_start = rng.bit_generator.state
        order = rng.permutation(len(y))
        for k in range(first_batch if epoch == first_epoch else 0, batches):
            if ctx.should_stop:
                _checkpoint(ctx, step, epoch, k, at_epoch_start, w, b)
                raise Stopped(f"checkpointed at step {step}")
            idx = order[k * batch : (k + 1) * batch]
            err = x[idx] @ w + b - y[idx]
            w -= lr * ((x[idx].T @ err) / len(idx) + l2 * w + mu * (w - w_global))
            b -= lr * (float(err.mean()) + mu * (b - b_global))
            step += 1
            if every.due(step, epoch_done=k + 1 == batches):
                _checkpoint(ctx, step, epoch, k + 1, at_epoch_start, w, b)
        ctx.progress((epoch + 1) / epochs)
    vx, vy = _validation(uri, dim)
    np.savez(ctx.output_dir / "model.npz", w=w, b=np.array(b))
    return {"metrics": {"loss": _mse(w, b, x, y), "val_loss": _mse(w, b, vx, vy)}, "num_samples": len(y)}


def _checkpoint(
    ctx: Any, step: int, epoch: int, batch: int, rng_state: Mapping[str, Any], w: np.ndarray, b: float
) -> bool:
    """Save the weights and the position (``batch`` batches of ``epoch`` done) as checkpoint ``step``."""
    position = {"epoch": epoch, "batch": batch, "rng": rng_state}
    return checkpointing.save(ctx, step, position, lambda d: np.savez(d / CHECKPOINT, w=w, b=np.array(b)))


def least_squares(
    uri: str | None, num_samples: int, fetch: Callable[[str], Path] | None = None
) -> tuple[np.ndarray, float]:
    """The centralized least-squares solution over the whole dataset (what FedAvg should approach)."""
    x, y = load_range(uri, 0, num_samples, fetch)
    design = np.hstack([x, np.ones((len(y), 1))])
    solution, *_ = np.linalg.lstsq(design, y, rcond=None)
    return solution[:-1], float(solution[-1])


def evaluate(task: Any, ctx: Any) -> dict[str, Any]:
    """A ``map`` job: summary statistics of each shard, written as ``stats.json``."""
    x, y = load_range(
        task.data.get("uri"), int(task.data["start"]), int(task.data["end"]), getattr(ctx, "fetch", None)
    )
    stats = {
        "y_mean": float(y.mean()),
        "y_std": float(y.std()),
        "x_norm": float(np.linalg.norm(x, axis=1).mean()),
    }
    (ctx.output_dir / "stats.json").write_text(json.dumps(stats))
    return {"metrics": stats, "num_samples": len(y)}


def score(task: Any, ctx: Any) -> dict[str, Any]:
    """A ``map`` job that evaluates a trained model (``model.init_uri``, e.g. a pipeline's
    ``after: {"use": "final_model"}``) on each shard: its mean squared error, and ``score.json``."""
    if ctx.init_model_path is None:
        raise ValueError(
            "score needs a model: set model.init_uri, or follow a job with after.use final_model"
        )
    x, y = load_range(
        task.data.get("uri"), int(task.data["start"]), int(task.data["end"]), getattr(ctx, "fetch", None)
    )
    with np.load(ctx.init_model_path) as m:
        w, b = m["w"].astype(np.float64), float(m["b"])
    metrics = {"mse": _mse(w, b, x, y)}
    (ctx.output_dir / "score.json").write_text(json.dumps(metrics))
    return {"metrics": metrics, "num_samples": len(y)}
