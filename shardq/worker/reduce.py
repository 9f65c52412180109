"""Default reducer for ``data_parallel`` rounds: the num_samples-weighted average of shard models
(FedAvg), then the entrypoint module's ``evaluate_global`` hook, if it has one.

The average is streamed: models arrive one at a time (the worker downloads the next only after
the previous one is added and deleted) into a running weighted sum, so a reduce holds one shard
model plus the sum in memory and one model on disk, whatever the shard count.

Reads numpy ``.npz`` archives and, when PyTorch is installed, ``.pt``/``.pth`` ``state_dict``
files. Floating arrays and tensors are summed in float64 and saved in their own dtype (a float32
model stays float32). Integer and boolean entries (step counters, masks, token ids) are never
averaged: the reduced model takes them from the first shard model, which started the round from
the global model's value.

The reduce contract (README, "The training contract"): a module that defines
``evaluate_global(task, model_path, ctx)`` gets it called once the worker has averaged the shard models
and applied the job's server strategy; the metrics it returns become the reduce result's metrics.
A module that defines its own ``reduce(task, ctx)`` replaces all of this and gets every shard model
downloaded at once in ``ctx.input_models``; a job whose ``strategy`` steps on the server (FedAvgM,
FedAdam, FedYogi) refuses such a module's reduce rather than let it drop the strategy silently.
Both find the job's evaluation dataset (request field ``evaluation``) in ``ctx.eval_dataset``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypedDict

import numpy as np

if TYPE_CHECKING:  # the runtime imports this module; the types alone flow back
    from shardq.core.contracts import ShardTask

NPZ_SUFFIXES = (".npz",)
TORCH_SUFFIXES = (".pt", ".pth")
MODEL_SUFFIXES = NPZ_SUFFIXES + TORCH_SUFFIXES


class InputModel(NamedTuple):
    """One shard model handed to a module's own ``reduce`` in ``ctx.input_models``."""

    path: Path
    """The model file, downloaded."""
    num_samples: int
    """The shard's ``num_samples``: its weight in FedAvg."""


class TaskOutcome(TypedDict, total=False):
    """What a ``train`` or ``reduce`` function returns (every key optional)."""

    metrics: dict[str, float]
    """Name → number; a reduce's are the round's metrics (e.g. the new global model's accuracy)."""
    num_samples: int
    """Samples this task covered: a train shard's weight in the round's average."""
    model_uri: str
    """Overrides the model the worker picked among the outputs (rarely needed)."""
    artifact_uri: str
    """Overrides the outputs' location (rarely needed)."""


class EvaluateHook(Protocol):
    """``evaluate_global(task, model_path, ctx) -> {metric: number}``: scores the round's new global model.

    (Not ``evaluate``: that name is often a ``map`` job's entrypoint in the same module, e.g.
    ``examples.linear:evaluate``, with another signature and meaning.)

    ``task`` is the reduce task (its ``hyperparameters`` and ``model`` are the job's); ``model_path``
    the reduced model (FedAvg, then the server strategy); ``ctx`` the task's context:
    ``ctx.eval_dataset`` (the request's ``evaluation``, ``{"uri", "num_samples"?}``, or None),
    ``ctx.device``, ``ctx.fetch``, ``ctx.logger``. The returned metrics become the reduce result's
    ``metrics``.
    """

    def __call__(self, task: ShardTask, model_path: Path, ctx: Any, /) -> Mapping[str, float]: ...


class ModelError(ValueError):
    """Shard models the default reduce cannot average; every attempt would fail alike."""


def evaluate_model(hook: EvaluateHook, task: ShardTask, model_path: Path, ctx: Any) -> dict[str, float]:
    """Call the entrypoint module's ``evaluate_global`` on the reduced model; its metrics, checked.

    Raises
    ------
    ModelError
        ``evaluate_global`` returned something other than a mapping of metric name → number (every
        attempt would return the same, so the reduce fails at once, naming the fix).
    """
    raw = hook(task, model_path, ctx)
    where = f"evaluate_global() of {task.entrypoint.partition(':')[0]}"
    if not isinstance(raw, Mapping):
        raise ModelError(
            f"{where} returned {type(raw).__name__}; return a dict of metric name → number, "
            'e.g. {"test_accuracy": 0.97}'
        )
    bad = [k for k, v in raw.items() if not isinstance(k, str) or not k or not isinstance(v, Real)]
    if bad:
        raise ModelError(
            f"{where} returned metrics {[str(k) for k in bad][:5]} that are not name → number: "
            "return a dict of str → int or float"
        )
    # NaN and ±inf pass: a diverged model's loss is a metric too, and ShardResult carries them.
    return {k: float(v) for k, v in raw.items()}


def custom_reduce_conflict(entrypoint: str, strategy: dict[str, Any]) -> str:
    """Why a module's own ``reduce`` cannot run a job whose ``strategy`` steps on the server.

    The module's ``reduce`` replaces the built-in one, server step included: running it would turn
    FedAvgM / FedAdam / FedYogi into whatever the module computes (usually FedAvg) without a word.
    """
    module = entrypoint.partition(":")[0]
    name = strategy.get("name")
    return (
        f"module {module} defines its own reduce(), but the request's strategy.name is {name!r}, a server "
        f"optimizer that only the built-in reduce applies: {module}.reduce would silently replace "
        f"{name} by its own combination. Remove reduce() from {module} (score the global model in "
        'evaluate_global(task, model_path, ctx) instead), or set "strategy": {"name": "fedavg"}'
    )


def factors(weights: Sequence[float]) -> list[float]:
    """Each model's share of the average: ``w / sum(w)``, or equal shares when the weights sum to 0."""
    total = float(sum(weights))
    if total <= 0:
        return [1.0 / len(weights)] * len(weights)
    return [float(w) / total for w in weights]


class _NpzSum:
    """Running weighted sum of ``.npz`` archives with the same array names and shapes.

    Floating arrays are summed in float64 and saved in their first model's dtype; other arrays
    (integers, booleans) are kept from the first model, never averaged.
    """

    def __init__(self) -> None:
        self.acc: dict[str, Any] = {}
        self.dtypes: dict[str, np.dtype[Any]] = {}

    def add(self, path: Path, factor: float) -> None:
        with np.load(path) as data:
            if self.acc and sorted(data.files) != sorted(self.acc):
                raise ModelError(
                    f"{path.name} holds arrays {sorted(data.files)}, the first shard model "
                    f"{sorted(self.acc)}: every shard must save the same arrays"
                )
            for name in data.files:
                array = data[name]
                if name in self.acc and self.acc[name].shape != array.shape:
                    raise ModelError(
                        f"array {name!r} has shape {array.shape} in {path.name}, {self.acc[name].shape} "
                        "in the first shard model: every shard must save the same shapes"
                    )
                floating = bool(np.issubdtype(array.dtype, np.floating))
                if name in self.acc and floating != (name in self.dtypes):
                    first = self.dtypes.get(name, self.acc[name].dtype)
                    raise ModelError(
                        f"array {name!r} is {array.dtype} in {path.name} but {first} in the first "
                        "shard model: every shard must save the same dtypes"
                    )
                if not floating:
                    self.acc.setdefault(name, array)
                    continue
                term = array.astype(np.float64) * factor
                if name not in self.acc:
                    # An array even for a 0-d entry (a scalar would not take the in-place adds below).
                    self.acc[name], self.dtypes[name] = np.array(term, dtype=np.float64), array.dtype
                else:
                    np.add(self.acc[name], term, out=self.acc[name])

    def save(self, out: Path) -> Path:
        arrays = {k: v.astype(self.dtypes[k]) if k in self.dtypes else v for k, v in self.acc.items()}
        np.savez(out, **arrays)
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


def nonfinite_array(path: Path) -> str | None:
    """The name of the first array of a model file holding NaN or ±inf (None: all finite, or a
    format this module does not read). A shard's model trained into NaN would make the FedAvg
    average NaN everywhere; its worker checks before posting and reports the shard failed."""
    suffix = path.suffix.lower()
    if suffix in NPZ_SUFFIXES:
        with np.load(path) as data:
            for name in data.files:
                array = data[name]
                if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
                    return name
        return None
    if suffix in TORCH_SUFFIXES:
        torch = _torch()
        state = torch.load(path, map_location="cpu", weights_only=True)
        for name, tensor in state.items():
            if (
                torch.is_tensor(tensor)
                and torch.is_floating_point(tensor)
                and not torch.isfinite(tensor).all()
            ):
                return str(name)
    return None


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
