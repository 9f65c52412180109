"""shardq entrypoint for the handwritten-digit example: ``examples.mnist.fedavg:train``, ``evaluate_global``.

A ``data_parallel`` request trains the model federated: each shard is one client. The request
picks everything; no code edits:

* ``dataset.uri``: the ``.npz`` written by ``examples.mnist.data.write_dataset``, uploaded to the
  stack's bucket; ``dataset.num_samples`` must equal its number of training samples (each task
  reads its own index range of the partition).
* ``sharding.shard_count``: the number of clients.
* ``model.arch``: ``"2nn"`` or ``"cnn"`` (default ``cnn``); ``model.init_uri`` optionally seeds round 0
  (the server strategies FedAvgM / FedAdam / FedYogi need it: they step from the global model).
* ``strategy``: FedAvg by default; ``{"name": "fedprox", "mu": 0.01}`` adds FedProx's proximal
  term μ/2·‖w − w_global‖² to each client's loss (``ctx.proximal_mu``); ``fedavgm``, ``fedadam``
  and ``fedyogi`` step on the server after the average, as Flower computes them.
* ``hyperparameters``: ``partition`` (``"iid"`` | ``"noniid"``, default ``iid``), ``lr`` (0.05),
  ``epochs`` (local epochs E, 1), ``batch_size`` (B, 10) and ``seed`` (0: initial weights, partition,
  batch order).
* ``evaluation.uri`` (required): the ``.npz`` whose held-out test set ``evaluate_global`` scores,
  normally the same as ``dataset.uri``; it reaches the hook as ``ctx.eval_dataset``. (Requests
  written before the field name it ``hyperparameters.test_uri``: deprecated, still read.)

Each train task trains on the slot's device (``ctx.device``: its own GPU on a GPU worker), saves
exactly one file, ``model.pt`` (a ``state_dict``), and reports ``train_loss`` (the cross-entropy),
``classes`` (digits among its samples) and ``train_s`` (seconds in local SGD alone).

The module defines no ``reduce``: the worker's built-in reduce averages the shard models weighted
by ``num_samples`` one at a time (FedAvg, O(one model) memory), applies the job's server strategy,
then calls ``evaluate_global``, whose ``test_accuracy`` and ``test_loss`` of the new global model become
the round's reduce metrics.

Checkpoints (``examples.checkpointing``): at the end of every local epoch (or every
``hyperparameters.checkpoint_every`` batches) and whenever the worker says stop
(``ctx.should_stop``, read between batches), the model's and the optimizer's state and
``models.Position``: epoch, batch, step, the epoch's loss so far and the batch-order generator's
state at the epoch's start. A resumed attempt on the CPU ends with the bits of an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from examples import checkpointing
from examples.mnist import models
from examples.mnist.data import PARTITIONS, client_ranges, partition_order
from shardq.worker import Stopped

CHECKPOINT = "state.pt"

_ARRAYS: dict[str, dict[str, np.ndarray]] = {}


@dataclass(frozen=True)
class Config:
    """The example's settings, read from a task's ``model`` and ``hyperparameters``."""

    arch: str = "cnn"
    partition: str = "iid"
    lr: float = 0.05
    epochs: int = 1
    batch_size: int = 10
    seed: int = 0

    @classmethod
    def of(cls, task: Any) -> Config:
        """Parse and check; raises ValueError naming every bad field and its fix."""
        hp, model = dict(task.hyperparameters), dict(task.model or {})
        problems = []
        cfg = cls(
            arch=str(model.get("arch", cls.arch)),
            partition=str(hp.get("partition", cls.partition)),
            lr=float(hp.get("lr", cls.lr)),
            epochs=int(hp.get("epochs", cls.epochs)),
            batch_size=int(hp.get("batch_size", cls.batch_size)),
            seed=int(hp.get("seed", cls.seed)),
        )
        if cfg.arch not in models.ARCHS:
            problems.append(f"model.arch must be one of {', '.join(models.ARCHS)}, got {cfg.arch!r}")
        if cfg.partition not in PARTITIONS:
            problems.append(
                f"hyperparameters.partition must be one of {', '.join(PARTITIONS)}, got {cfg.partition!r}"
            )
        if cfg.lr <= 0 or cfg.epochs < 1 or cfg.batch_size < 1:
            problems.append("hyperparameters.lr must be > 0, epochs and batch_size >= 1")
        if problems:
            raise ValueError("; ".join(problems))
        return cfg


def load_arrays(uri: str, fetch: Callable[[str], Path] | None) -> dict[str, np.ndarray]:
    """The dataset arrays, read once per worker process (``fetch`` downloads an ``s3://`` URI)."""
    if uri not in _ARRAYS:
        path = fetch(uri) if fetch is not None else Path(uri.removeprefix("file://"))
        with np.load(path) as data:
            _ARRAYS[uri] = {k: data[k] for k in data.files}
    return _ARRAYS[uri]


def shard_samples(task: Any, cfg: Config, y_train: np.ndarray) -> np.ndarray:
    """This client's sample indices: its ``[start, end)`` range of the partition order."""
    start, end = int(task.data["start"]), int(task.data["end"])
    expected = client_ranges(len(y_train), task.shard_count)[task.shard_id]
    if (start, end) != expected:
        raise ValueError(
            f"shard {task.shard_id} has samples [{start}, {end}) but the partition of {len(y_train)} "
            f"training samples into {task.shard_count} clients gives {list(expected)}: set "
            f"dataset.num_samples to {len(y_train)} (its training samples) and use sharding.shard_count"
        )
    return partition_order(y_train, cfg.partition, task.shard_count, cfg.seed)[start:end]


def train(task: Any, ctx: Any) -> dict[str, Any]:
    """Local SGD (FedProx's when ``ctx.proximal_mu`` > 0) from the round's global model on this
    client's samples, on ``ctx.device``; saves ``model.pt``."""
    cfg = Config.of(task)
    device = models.device_for(ctx.device)
    data = load_arrays(task.data["uri"], ctx.fetch)
    idx = shard_samples(task, cfg, data["y_train"])
    model = models.build(cfg.arch, cfg.seed)
    if ctx.init_model_path is not None:
        model.load_state_dict(models.load_state(ctx.init_model_path))
    every = checkpointing.Every.of(task.hyperparameters)  # each epoch's end, or every k batches
    resume = _resume(ctx)
    saved = [resume.position.step if resume is not None else 0]

    def boundary(at: models.Position, net: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        stop = ctx.should_stop
        if at.step != saved[0] and (stop or every.due(at.step, epoch_done=at.batch == 0)):
            saved[0] = at.step
            checkpointing.save(ctx, at.step, at.to_json(), lambda d: _save_state(net, opt, d / CHECKPOINT))
        if stop:
            raise Stopped(f"checkpointed at step {at.step}")

    began = time.perf_counter()
    loss = models.local_train(
        model,
        data["x_train"][idx],
        data["y_train"][idx],
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        generator=models.batch_generator(cfg.seed, task.round, task.shard_id),
        device=device,
        proximal_mu=ctx.proximal_mu,
        resume=resume,
        boundary=boundary,
    )
    train_s = time.perf_counter() - began
    ctx.progress(1.0)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, ctx.output_dir / "model.pt")
    classes = len(np.unique(data["y_train"][idx]))
    metrics = {"train_loss": loss, "classes": float(classes), "train_s": train_s}
    return {"metrics": metrics, "num_samples": len(idx)}


def _save_state(model: torch.nn.Module, opt: torch.optim.Optimizer, path: Path) -> None:
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model": weights, "optimizer": opt.state_dict()}, path)


def _resume(ctx: Any) -> models.Resume | None:
    """The task's latest checkpoint, loaded; None on a fresh start."""
    position = checkpointing.resume_position(ctx)
    if position is None:
        return None
    state = torch.load(Path(ctx.resume_path) / CHECKPOINT, map_location="cpu", weights_only=True)
    return models.Resume(models.Position.from_json(position), state["model"], state["optimizer"])


def evaluate_global(task: Any, model_path: Path, ctx: Any) -> dict[str, float]:
    """The reduce hook: the new global model's accuracy and loss on the held-out test set.

    The worker calls it after it averaged the shard models and applied the job's server strategy;
    it reads the test set from the job's evaluation dataset (``ctx.eval_dataset``, the request's
    ``evaluation``) and computes on ``ctx.device``.

    Raises
    ------
    ValueError
        The job names no evaluation dataset.
    """
    cfg = Config.of(task)
    if not ctx.eval_dataset:
        raise ValueError(
            'the job has no evaluation dataset: give the request "evaluation": {"uri": ...}, the .npz '
            "whose test set evaluate_global() scores (normally the same as dataset.uri)"
        )
    model = models.build(cfg.arch, cfg.seed)
    model.load_state_dict(models.load_state(model_path))
    data = load_arrays(str(ctx.eval_dataset["uri"]), ctx.fetch)
    accuracy, loss = models.evaluate(
        model, data["x_test"], data["y_test"], device=models.device_for(ctx.device)
    )
    return {"test_accuracy": accuracy, "test_loss": loss}
