"""The 2NN and CNN of McMahan et al. (2017), deterministic local SGD, evaluation and FedAvg (PyTorch).

Scaled for 2 CPU cores: the 2NN is the paper's (784-200-200-10, ReLU); the CNN keeps its
shape (two 5 × 5 convolutions, each followed by 2 × 2 max pooling, a fully connected layer,
softmax) with 8 and 16 channels and 64 units instead of 32, 64 and 512.

Everything here is bit-for-bit reproducible on one machine: one intra-op thread (the
reduction order of a multi-threaded kernel depends on the thread count), a batch order drawn
from a generator seeded by ``(seed, round, client)``, and plain SGD. shardq's workers and
Flower's clients call the same ``local_train``, so their client updates are identical.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ARCHS = ("2nn", "cnn")
# The centralized baseline draws its batch order as one more "client", distinct from every real one.
CENTRALIZED_CLIENT = 2**16


# Layer constructors draw their initial weights from torch's one global generator. A worker with
# --concurrency 2 builds two models at once in two threads; without the lock their seeds and draws
# interleave and the shards start round 0 from different, mixed weights.
_INIT_LOCK = threading.Lock()


def build(arch: str, seed: int) -> nn.Module:
    """A freshly initialised model; the same ``seed`` gives the same initial weights everywhere."""
    if arch not in ARCHS:
        raise ValueError(f"model.arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    with _INIT_LOCK:
        torch.manual_seed(seed)
        return _layers(arch)


def _layers(arch: str) -> nn.Module:
    if arch == "2nn":
        return nn.Sequential(
            nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10)
        )
    if arch == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10),
        )  # fmt: skip
    raise AssertionError(arch)


def images(x: np.ndarray) -> torch.Tensor:
    """``uint8`` pixels (n, 784) → float images (n, 1, 28, 28) in [0, 1]."""
    return torch.from_numpy(x.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0)


def batch_generator(seed: int, round_no: int, client: int) -> torch.Generator:
    """The generator that orders one client's batches in one round (independent of everything else)."""
    state = np.random.SeedSequence([seed, round_no, client]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def local_train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
) -> float:
    """Minibatch SGD on ``(x, y)`` in place; returns the mean training loss of the last epoch."""
    torch.set_num_threads(1)
    inputs, targets = images(x), torch.from_numpy(y.astype(np.int64))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    loss_sum = 0.0
    for _ in range(epochs):
        loss_sum = 0.0
        for idx in torch.randperm(len(targets), generator=generator).split(batch_size):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs[idx]), targets[idx])
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
    return loss_sum / max(1, len(targets))


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``model`` on ``(x, y)``."""
    torch.set_num_threads(1)
    model.eval()
    with torch.no_grad():
        logits = model(images(x))
        targets = torch.from_numpy(y.astype(np.int64))
        loss = float(nn.functional.cross_entropy(logits, targets))
        accuracy = float((logits.argmax(dim=1) == targets).float().mean())
    return accuracy, loss


def fedavg(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """The ``weights``-weighted average of ``state_dict``s (FedAvg), summed in float64, stored as float32."""
    total = float(sum(weights))
    if not states or total <= 0:
        raise ValueError("FedAvg needs at least one model with a positive number of samples")
    merged: dict[str, torch.Tensor] = {}
    for state, weight in zip(states, weights, strict=True):
        for name, tensor in state.items():
            term = tensor.double() * (weight / total)
            merged[name] = term if name not in merged else merged[name] + term
    return {name: tensor.float() for name, tensor in merged.items()}


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """A ``state_dict`` saved by ``torch.save`` (tensors only)."""
    return dict(torch.load(path, map_location="cpu", weights_only=True))


def state_arrays(model_or_state: nn.Module | dict[str, Any]) -> dict[str, np.ndarray]:
    """Parameters as numpy arrays by name (for comparing models across systems)."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return {k: v.detach().cpu().numpy().copy() for k, v in state.items()}


def train_centralized(
    arch: str,
    data: dict[str, np.ndarray],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> list[dict[str, float]]:
    """The centralized baseline: the same model and SGD on all training data; test metrics per epoch."""
    model = build(arch, seed)
    history = []
    for epoch in range(epochs):
        order = batch_generator(seed, epoch, CENTRALIZED_CLIENT)
        train_loss = local_train(
            model, data["x_train"], data["y_train"], epochs=1, batch_size=batch_size, lr=lr, generator=order
        )
        accuracy, loss = evaluate(model, data["x_test"], data["y_test"])
        history.append(
            {"epoch": epoch + 1, "train_loss": train_loss, "test_accuracy": accuracy, "test_loss": loss}
        )
    return history
