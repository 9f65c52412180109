"""Server strategies of the default reduce: FedAvgM, FedAdam and FedYogi, as Flower computes them.

The reduce first averages the shard models (FedAvg, ``shardq.worker.reduce``) into x̄, then steps
from the round's global model x (the reduce task's ``init_model_uri``) with Flower's formulas
(``flwr.server.strategy.fedavgm / fedadam / fedyogi``, ``aggregate_fit``):

* **FedAvgM**: g = x − x̄ (the pseudo-gradient, "updates are the opposite of gradients");
  v ← momentum·v + g (v = g in the first round); x ← x − server_lr·v.
* **FedAdam**: Δ = x̄ − x; m ← β1·m + (1 − β1)·Δ; v ← β2·v + (1 − β2)·Δ²;
  x ← x + server_lr·m / (√v + τ). No bias correction, τ outside the square root.
* **FedYogi**: as FedAdam but v ← v − (1 − β2)·Δ²·sign(v − Δ²).

The server state (v, or m and v) lives in ``server_state.npz`` beside the reduced model, one
array per model entry (``momentum/<name>``, ``m/<name>``, ``v/<name>``), in float64. A reduce
reads the previous round's state and writes its own under its own prefix, so a retried reduce
recomputes the same step. ``fedavg`` and ``fedprox`` reduce as plain FedAvg.

Works on ``.npz`` archives (every array) and PyTorch ``state_dict`` files (floating tensors;
other entries, such as step counters, are taken from the average).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from shardq.worker.reduce import NPZ_SUFFIXES, TORCH_SUFFIXES, ModelError, _torch

SERVER_STATE_NAME = "server_state.npz"
# Strategies whose reduce steps from the global model with a server optimizer.
SERVER_OPTIMIZERS = ("fedavgm", "fedadam", "fedyogi")
# The state each keeps between rounds.
STATE_SLOTS: dict[str, tuple[str, ...]] = {
    "fedavgm": ("momentum",),
    "fedadam": ("m", "v"),
    "fedyogi": ("m", "v"),
}

Arrays = dict[str, np.ndarray]


def needs_server_step(strategy: Mapping[str, Any]) -> bool:
    """True when the reduce applies a server optimizer after averaging (FedAvgM, FedAdam, FedYogi)."""
    return strategy.get("name") in SERVER_OPTIMIZERS


def server_step(
    name: str, params: Mapping[str, float], x_global: Arrays, x_avg: Arrays, state: Arrays
) -> tuple[Arrays, Arrays]:
    """One server optimizer step, Flower's formulas; returns (new global model, new state).

    Parameters
    ----------
    name:
        ``fedavgm``, ``fedadam`` or ``fedyogi``.
    params:
        The strategy's parameters (``server_lr``, ``momentum`` or ``beta1``, ``beta2``, ``tau``).
    x_global, x_avg:
        The round's global model and the FedAvg average of the shard models, by entry name.
    state:
        The previous round's state (``momentum/<name>`` or ``m/<name>``, ``v/<name>``); a missing
        entry starts at zero (the first round).
    """
    lr = float(params["server_lr"])
    new_model: Arrays = {}
    new_state: Arrays = {}
    for key, x in x_global.items():
        delta = x_avg[key] - x
        if name == "fedavgm":
            grad = -delta  # Flower: pseudo_gradient = initial - fedavg
            momentum = float(params["momentum"])
            v = momentum * state[f"momentum/{key}"] + grad if f"momentum/{key}" in state else grad
            new_model[key] = x - lr * v
            new_state[f"momentum/{key}"] = v
            continue
        beta1, beta2, tau = float(params["beta1"]), float(params["beta2"]), float(params["tau"])
        m = state.get(f"m/{key}", np.zeros_like(x))
        v = state.get(f"v/{key}", np.zeros_like(x))
        m = beta1 * m + (1 - beta1) * delta
        squared = delta * delta
        if name == "fedadam":
            v = beta2 * v + (1 - beta2) * squared
        elif name == "fedyogi":
            v = v - (1.0 - beta2) * squared * np.sign(v - squared)
        else:
            raise ModelError(f"strategy.name {name!r} has no server step; use one of {SERVER_OPTIMIZERS}")
        new_model[key] = x + lr * m / (np.sqrt(v) + tau)
        new_state[f"m/{key}"], new_state[f"v/{key}"] = m, v
    return new_model, new_state


def load_state(path: Path | None, name: str, model_keys: list[str]) -> Arrays:
    """The previous round's server state (empty without a file: the first round starts at zero).

    Raises ``ModelError`` when the file holds other entries than the model's.
    """
    if path is None:
        return {}
    with np.load(path) as data:
        state = {k: data[k].astype(np.float64) for k in data.files}
    expected = sorted(f"{slot}/{k}" for slot in STATE_SLOTS[name] for k in model_keys)
    if sorted(state) != expected:
        raise ModelError(
            f"{path.name} holds {sorted(state)[:6]}, but strategy {name} on this model needs "
            f"{expected[:6]}: the model's entries changed between rounds, or the state is another job's"
        )
    return state


def _read(path: Path) -> tuple[Arrays, dict[str, Any]]:
    """A model's floating entries as float64 arrays, and everything as it was (to write back)."""
    if path.suffix in NPZ_SUFFIXES:
        with np.load(path) as data:
            raw = {k: data[k] for k in data.files}
        return {k: v.astype(np.float64) for k, v in raw.items()}, raw
    if path.suffix in TORCH_SUFFIXES:
        torch = _torch()
        state = torch.load(path, map_location="cpu", weights_only=True)
        floats = {k: t.double().numpy() for k, t in state.items() if torch.is_floating_point(t)}
        return floats, dict(state)
    raise ModelError(f"cannot apply a server strategy to {path.suffix or 'suffix-less'} models")


def _write(path: Path, floats: Arrays, raw: dict[str, Any]) -> None:
    if path.suffix in NPZ_SUFFIXES:
        np.savez(path, **{k: floats.get(k, v) for k, v in raw.items()})
        return
    torch = _torch()
    out = {k: torch.from_numpy(floats[k]).to(v.dtype) if k in floats else v for k, v in raw.items()}
    torch.save(out, path)


def apply_strategy(
    strategy: Mapping[str, Any], average: Path, global_model: Path, state_path: Path | None
) -> Path:
    """Replace the FedAvg ``average`` by the server step from ``global_model``; write the new state.

    Returns the new state's file (``server_state.npz`` beside ``average``).

    Raises
    ------
    ModelError
        The global model and the average differ in format, entries or shapes, or the state does
        not match them.
    """
    name = str(strategy["name"])
    if global_model.suffix != average.suffix:
        raise ModelError(
            f"the round's global model is {global_model.name} but the shard models are {average.suffix}: "
            "model.init_uri must be saved in the format the training function saves"
        )
    x_avg, raw = _read(average)
    x_global, _ = _read(global_model)
    if sorted(x_global) != sorted(x_avg) or any(x_global[k].shape != x_avg[k].shape for k in x_avg):
        shapes = {k: v.shape for k, v in x_global.items()}
        raise ModelError(
            f"the round's global model {global_model.name} has entries {shapes}, the shard models "
            f"{ {k: v.shape for k, v in x_avg.items()} }: a server strategy needs the same entries"
        )
    params = {k: float(v) for k, v in strategy.items() if k != "name"}
    model, state = server_step(name, params, x_global, x_avg, load_state(state_path, name, sorted(x_avg)))
    _write(average, model, raw)
    out = average.parent / SERVER_STATE_NAME
    arrays: dict[str, Any] = dict(state)  # np.savez's stubs type **kwds loosely
    np.savez(out, **arrays)
    return out
