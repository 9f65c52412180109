"""Default reducer for ``data_parallel`` rounds: the num_samples-weighted average of shard models (FedAvg).

The average is streamed: models arrive one at a time (the worker downloads the next only after
the previous one is added and deleted) into a running weighted sum, so a reduce holds one shard
model plus the sum in memory and one model on disk, whatever the shard count.

Reads numpy ``.npz`` archives (every array averaged by name, in float64) and, when PyTorch is
installed, ``.pt``/``.pth`` ``state_dict`` files (floating tensors averaged in float64 and saved
in their own dtype; integer buffers such as step counters taken from the first model).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

NPZ_SUFFIXES = (".npz",)
TORCH_SUFFIXES = (".pt", ".pth")
MODEL_SUFFIXES = NPZ_SUFFIXES + TORCH_SUFFIXES


class ModelError(ValueError):
    """Shard models the default reduce cannot average; every attempt would fail alike."""


def factors(weights: Sequence[float]) -> list[float]:
    """Each model's share of the average: ``w / sum(w)``, or equal shares when the weights sum to 0."""
    total = float(sum(weights))
    if total <= 0:
        return [1.0 / len(weights)] * len(weights)
    return [float(w) / total for w in weights]


class _NpzSum:
    """Running weighted sum of ``.npz`` archives with the same array names and shapes."""

    def __init__(self) -> None:
        self.acc: dict[str, Any] = {}

    def add(self, path: Path, factor: float) -> None:
        with np.load(path) as data:
            if self.acc and sorted(data.files) != sorted(self.acc):
                raise ModelError(
                    f"{path.name} holds arrays {sorted(data.files)}, the first shard model "
                    f"{sorted(self.acc)}: every shard must save the same arrays"
                )
            for name in data.files:
                term = data[name].astype(np.float64) * factor
                if name not in self.acc:
                    # An array even for a 0-d entry (a scalar would not take the in-place adds below).
                    self.acc[name] = np.array(term, dtype=np.float64)
                elif self.acc[name].shape != term.shape:
                    raise ModelError(
                        f"array {name!r} has shape {term.shape} in {path.name}, {self.acc[name].shape} "
                        "in the first shard model: every shard must save the same shapes"
                    )
                else:
                    np.add(self.acc[name], term, out=self.acc[name])

    def save(self, out: Path) -> Path:
        np.savez(out, **self.acc)
        return out


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ModelError(
            "the shard models are PyTorch state_dicts (.pt) but PyTorch is not installed on this worker: "
            "install it (`make torch`, or pip install -r requirements-torch.txt; on a GPU host the CUDA "
            "build), save .npz models instead, or define reduce() in the entrypoint module"
        ) from exc
    return torch


class _StateDictSum:
    """Running weighted sum of PyTorch ``state_dict`` files."""

    def __init__(self) -> None:
        self.torch = _torch()
        self.acc: dict[str, Any] = {}
        self.dtypes: dict[str, Any] = {}

    def add(self, path: Path, factor: float) -> None:
        torch = self.torch
        state = torch.load(path, map_location="cpu", weights_only=True)
        if self.acc and sorted(state) != sorted(self.acc):
            raise ModelError(
                f"{path.name} holds tensors {sorted(state)[:8]}, the first shard model "
                f"{sorted(self.acc)[:8]}: every shard must save the same state_dict keys"
            )
        for name, tensor in state.items():
            if not torch.is_floating_point(tensor):
                self.acc.setdefault(name, tensor)
                continue
            term = tensor.double() * factor
            if name not in self.acc:
                self.acc[name], self.dtypes[name] = term, tensor.dtype
            elif self.acc[name].shape != term.shape:
                raise ModelError(
                    f"tensor {name!r} has shape {tuple(term.shape)} in {path.name}, "
                    f"{tuple(self.acc[name].shape)} in the first shard model"
                )
            else:
                self.acc[name].add_(term)

    def save(self, out: Path) -> Path:
        self.torch.save(
            {k: v.to(self.dtypes[k]) if k in self.dtypes else v for k, v in self.acc.items()}, out
        )
        return out


def _summer(suffix: str) -> _NpzSum | _StateDictSum:
    if suffix in NPZ_SUFFIXES:
        return _NpzSum()
    if suffix in TORCH_SUFFIXES:
        return _StateDictSum()
    raise ModelError(
        f"cannot average {suffix or 'suffix-less'} models; save .npz or a PyTorch state_dict (.pt), "
        "or define reduce() in the entrypoint module"
    )


def average_stream(
    models: Iterable[Path], weights: Sequence[float], out_dir: Path, name: str | None = None
) -> Path:
    """Weighted average of models taken one at a time from ``models`` (O(one model) memory).

    Parameters
    ----------
    models:
        Local model files, in the order of ``weights``; may be a generator that fetches each file
        only when asked and deletes the previous one.
    weights:
        Each model's weight (its ``num_samples``), known before the first model is read.
    out_dir:
        Where the average is written.
    name:
        Its file name (default: the first model's).

    Returns
    -------
    Path
        The averaged model.

    Raises
    ------
    ModelError
        No models, models of different types, names or shapes, or ``.pt`` without PyTorch.
    """
    if not weights:
        raise ModelError("no shard models to average")
    shares = factors(weights)
    summer: _NpzSum | _StateDictSum | None = None
    first: Path | None = None
    for path, share in zip(models, shares, strict=True):
        if first is None:
            first, summer = path, _summer(path.suffix)
        elif path.suffix != first.suffix:
            raise ModelError(f"shard models mix {first.suffix} and {path.suffix}: save one format")
        assert summer is not None  # set with ``first``
        summer.add(path, share)
    if summer is None or first is None:
        raise ModelError("no shard models to average")
    out_dir.mkdir(parents=True, exist_ok=True)
    return summer.save(out_dir / (name or first.name))


def average_npz(paths: Sequence[Path], weights: Sequence[float], out: Path) -> Path:
    """Weighted average of ``.npz`` archives with the same array names and shapes, written to ``out``."""
    summer = _NpzSum()
    for path, share in zip(paths, factors(weights), strict=True):
        summer.add(path, share)
    out.parent.mkdir(parents=True, exist_ok=True)
    return summer.save(out)


def average_state_dicts(paths: Sequence[Path], weights: Sequence[float], out: Path) -> Path:
    """Weighted average of PyTorch ``state_dict`` files (floating tensors averaged, others from the first)."""
    summer = _StateDictSum()
    for path, share in zip(paths, factors(weights), strict=True):
        summer.add(path, share)
    out.parent.mkdir(parents=True, exist_ok=True)
    return summer.save(out)


def average_models(paths: Sequence[Path], weights: Sequence[float], out_dir: Path) -> Path:
    """Average models by file type; the result is written to ``out_dir`` under the inputs' file name."""
    return average_stream(paths, weights, out_dir)
