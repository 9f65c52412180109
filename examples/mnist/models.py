"""The 2NN and CNN of McMahan et al. (2017), deterministic local SGD (with FedProx's proximal term),
evaluation, and a plain reference FedAvg to compare shardq's reduce against (PyTorch).

Scaled for 2 CPU cores: the 2NN is the paper's (784-200-200-10, ReLU); the CNN keeps its
shape (two 5 × 5 convolutions, each followed by 2 × 2 max pooling, a fully connected layer,
softmax) with 8 and 16 channels and 64 units instead of 32, 64 and 512.

Everything here is bit-for-bit reproducible on one machine's CPU: one intra-op thread (the
reduction order of a multi-threaded kernel depends on the thread count), a batch order drawn
from a generator seeded by ``(seed, round, client)``, and plain SGD. On a GPU (``device``) the
batch order is the same but cuDNN's kernels may round differently from run to run. shardq's workers and
Flower's clients call the same ``local_train``, so their client updates are identical.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


def device_for(name: str) -> torch.device:
    """The torch device for a slot's ``ctx.device`` (``cpu`` or ``cuda:K``).

    Raises
    ------
    RuntimeError
        ``name`` is a GPU but this PyTorch build sees none: training on the CPU instead would
        silently run a GPU fleet at CPU speed.
    """
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"ctx.device is {name} but PyTorch {torch.__version__} sees no CUDA device: install the CUDA "
            "build of PyTorch in the worker's image, or start the worker with CUDA_VISIBLE_DEVICES= "
            "to train on the CPU"
        )
    return torch.device(name)


@dataclass
class Position:
    """Where local SGD is: ``batch`` batches of ``epoch`` done, ``step`` batches in all, the epoch's
    loss so far, and the batch-order generator's state at the start of ``epoch`` (from which a
    resumed run redraws the same order)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    generator: torch.Tensor | None = None

    def to_json(self) -> dict[str, Any]:
        """The position as JSON values (the generator's state as a list of byte values)."""
        state = [] if self.generator is None else self.generator.tolist()
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "loss_sum": self.loss_sum,
            "generator": state,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Position:
        """The inverse of ``to_json``."""
        return cls(
            epoch=int(raw["epoch"]),
            batch=int(raw["batch"]),
            step=int(raw["step"]),
            loss_sum=float(raw["loss_sum"]),
            generator=torch.tensor(raw["generator"], dtype=torch.uint8),
        )


@dataclass(frozen=True)
class Resume:
    """A checkpoint to continue from: the position, the model's and the optimizer's state."""

    position: Position
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]


# Called before every batch with the position, the model and the optimizer: where a caller
# checkpoints (and, told to stop, raises to end the loop).
Boundary = Callable[[Position, nn.Module, torch.optim.Optimizer], None]


def local_train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    device: str | torch.device = "cpu",
    proximal_mu: float = 0.0,
    resume: Resume | None = None,
    boundary: Boundary | None = None,
) -> float:
    """Minibatch SGD on ``(x, y)`` in place, on ``device``; returns the mean training loss of the last epoch.

    ``proximal_mu`` > 0 trains FedProx's local objective (Li et al., 2020): the cross-entropy plus
    μ/2·‖w − w_global‖², w_global being the weights the model has when the call starts (the
    round's global model). The returned loss is the cross-entropy alone, comparable across μ.
    With μ = 0 the loop is plain SGD, bit for bit what it was before FedProx existed here.

    ``resume`` continues a checkpointed run (``model`` still holds the round's global model, the
    proximal anchor): it ends with the same bits as the run that was never interrupted.
    ``boundary`` is called before every batch (see ``Boundary``); an exception it raises ends
    the loop.
    """
    torch.set_num_threads(1)
    dev = torch.device(device)
    model.to(dev)
    inputs, targets = images(x).to(dev), torch.from_numpy(y.astype(np.int64)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    at = Position()
    if resume is not None:
        model.load_state_dict(resume.model)
        opt.load_state_dict(resume.optimizer)
        assert resume.position.generator is not None
        generator.set_state(resume.position.generator)
        at = resume.position
    model.train()
    loss_sum, step = at.loss_sum, at.step
    for epoch in range(at.epoch, epochs):
        started = generator.get_state()
        # The batch order is drawn on the CPU generator whatever the device: the same on every machine.
        batches = torch.randperm(len(targets), generator=generator).split(batch_size)
        first = at.batch if epoch == at.epoch else 0
        if first == 0:
            loss_sum = 0.0
        for k in range(first, len(batches)):
            if boundary is not None:
                boundary(Position(epoch, k, step, loss_sum, started), model, opt)
            idx = batches[k].to(dev)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs[idx]), targets[idx])
            objective = loss
            if anchor:
                drift = sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), anchor, strict=True))
                objective = loss + proximal_mu / 2 * drift
            objective.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            step += 1
    return loss_sum / max(1, len(targets))


def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, device: str | torch.device = "cpu"
) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``model`` on ``(x, y)``, computed on ``device``."""
    torch.set_num_threads(1)
    dev = torch.device(device)
    model.to(dev)
    model.eval()
    with torch.no_grad():
        logits = model(images(x).to(dev))
        targets = torch.from_numpy(y.astype(np.int64)).to(dev)
        loss = float(nn.functional.cross_entropy(logits, targets))
        accuracy = float((logits.argmax(dim=1) == targets).float().mean())
    return accuracy, loss


def fedavg(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """A plain reference FedAvg, for the tests and the benchmark to compare shardq's reduce against.

    The ``weights``-weighted average of ``state_dict``s, summed in float64, stored as float32. The
    example itself does not call it: its rounds reduce with the worker's built-in streamed average
    (``shardq.worker.reduce``), which is what lets the job's server strategy step after it.
    """
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
