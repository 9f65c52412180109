"""Default reducer for ``data_parallel`` rounds: the num_samples-weighted average of shard models (FedAvg).

Reads numpy ``.npz`` archives (every array averaged by name) and, when PyTorch is
installed, ``.pt``/``.pth`` ``state_dict`` files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def average_npz(paths: Sequence[Path], weights: Sequence[float], out: Path) -> Path:
    """Weighted average of ``.npz`` archives with the same array names and shapes."""
    total = float(sum(weights))
    if total <= 0:
        weights, total = [1.0] * len(paths), float(len(paths))
    acc: dict[str, Any] = {}
    for path, w in zip(paths, weights, strict=True):
        with np.load(path) as data:
            for name in data.files:
                term = data[name].astype(np.float64) * (w / total)
                acc[name] = term if name not in acc else acc[name] + term
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **acc)
    return out


def average_state_dicts(paths: Sequence[Path], weights: Sequence[float], out: Path) -> Path:
    """Weighted average of PyTorch ``state_dict`` files (floating tensors averaged, others from the first)."""
    import torch  # optional dependency: only when the shards saved PyTorch models

    total = float(sum(weights)) or float(len(paths))
    merged: dict[str, Any] = {}
    for i, (path, w) in enumerate(zip(paths, weights, strict=True)):
        state = torch.load(path, map_location="cpu", weights_only=True)
        for name, tensor in state.items():
            if not torch.is_floating_point(tensor):
                merged.setdefault(name, tensor)
                continue
            term = tensor.double() * (w / total)
            merged[name] = term if i == 0 else merged[name] + term
    torch.save({k: v.float() if torch.is_floating_point(v) else v for k, v in merged.items()}, out)
    return out


def average_models(paths: Sequence[Path], weights: Sequence[float], out_dir: Path) -> Path:
    """Average models by file type; the result is written to ``out_dir`` under the inputs' file name."""
    if not paths:
        raise ValueError("no shard models to average")
    suffix = paths[0].suffix
    out = out_dir / paths[0].name
    if suffix == ".npz":
        return average_npz(paths, weights, out)
    if suffix in (".pt", ".pth"):
        return average_state_dicts(paths, weights, out)
    raise ValueError(f"cannot average {suffix} models; save .npz or a PyTorch state_dict, or define reduce()")
