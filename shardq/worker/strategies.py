"""Server strategies of the default reduce: FedAvgM, FedAdam and FedYogi, as Flower computes them.

The reduce first averages the shard models (FedAvg, ``shardq.worker.reduce``) into x̄, then steps
from the round's global model x (the reduce task's ``init_model_uri``) with Flower's formulas
(``flwr.serverapp.strategy.FedAvgM / FedAdam / FedYogi``, ``aggregate_train``; the same arithmetic
as the older ``flwr.server.strategy`` classes' ``aggregate_fit``):

* **FedAvgM**: g = x − x̄ (the pseudo-gradient, "updates are the opposite of gradients");
  v ← momentum·v + g (v = g in the first round); x ← x − server_lr·v.
* **FedAdam**: Δ = x̄ − x; m ← β1·m + (1 − β1)·Δ; v ← β2·v + (1 − β2)·Δ²;
  x ← x + η_t·m / (√v + τ), τ outside the square root, with Flower's bias-corrected rate
  (since Flower 1.13) η_t = server_lr·√(1 − β2^t) / (1 − β1^t). Flower raises β to
  ``server_round + 1`` and counts rounds from 1, so shardq's round r (counted from 0) steps with
  t = r + 2, as Flower's run of the same round does (Kingma & Ba's t would be r + 1; shardq
  follows Flower, step for step).
* **FedYogi**: as FedAdam but v ← v − (1 − β2)·Δ²·sign(v − Δ²), and no bias correction: Flower's
  FedYogi steps with server_lr itself.

``tests/worker/test_strategies.py`` checks each step against vectors computed by hand from these
formulas and, where Flower is installed (``make flower``), against Flower's own strategy classes
run on the same arrays.

The server state (v, or m and v) lives in ``server_state.npz`` beside the reduced model, one
array per floating model entry (``momentum/<name>``, ``m/<name>``, ``v/<name>``), in float64.
A reduce reads the previous round's state and writes its own under its own prefix, so a retried
reduce recomputes the same step. ``fedavg`` and ``fedprox`` reduce as plain FedAvg (FedProx's μ
acts in the clients' local loss: ``ctx.proximal_mu``).

Works on ``.npz`` archives and PyTorch ``state_dict`` files alike: floating entries step (in
float64, saved in their own dtype); the others (integer step counters, boolean masks) are taken
from the average, which takes them from the first shard model.
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
    """True when the reduce applies a server step (FedAvgM, FedAdam, FedYogi after averaging; FedBuff)."""
    # FedBuff steps too (its own step, ``shardq.worker.fedbuff``): a module's reduce() would drop it.
    return strategy.get("name") in (*SERVER_OPTIMIZERS, "fedbuff")


def adam_rate(server_lr: float, beta1: float, beta2: float, round_no: int) -> float:
    """FedAdam's bias-corrected server rate for shardq round ``round_no`` (counted from 0).

    Flower's ``eta_norm = eta·√(1 − β2^(server_round + 1)) / (1 − β1^(server_round + 1))`` with
    ``server_round = round_no + 1`` (Flower counts rounds from 1): the exponent is ``round_no + 2``.
    """
    t = round_no + 2.0
    return server_lr * float(np.sqrt(1.0 - np.power(beta2, t))) / (1.0 - float(np.power(beta1, t)))


def server_step(
    name: str,
    params: Mapping[str, float],
    x_global: Arrays,
    x_avg: Arrays,
    state: Arrays,
    *,
    round_no: int,
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
    round_no:
        The round being reduced, counted from 0 (FedAdam's bias correction depends on it).

    Raises
    ------
    ModelError
        ``name`` is not a server optimizer.
    """
    if name not in SERVER_OPTIMIZERS:
        raise ModelError(f"strategy.name {name!r} has no server step; use one of {SERVER_OPTIMIZERS}")
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
            rate = adam_rate(lr, beta1, beta2, round_no)
        else:  # fedyogi
            v = v - (1.0 - beta2) * squared * np.sign(v - squared)
            rate = lr
        new_model[key] = x + rate * m / (np.sqrt(v) + tau)
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
        floats = {k: v.astype(np.float64) for k, v in raw.items() if np.issubdtype(v.dtype, np.floating)}
        return floats, raw
    if path.suffix in TORCH_SUFFIXES:
        torch = _torch()
        state = torch.load(path, map_location="cpu", weights_only=True)
        floats = {k: t.double().numpy() for k, t in state.items() if torch.is_floating_point(t)}
        return floats, dict(state)
    raise ModelError(f"cannot apply a server strategy to {path.suffix or 'suffix-less'} models")


def _write(path: Path, floats: Arrays, raw: dict[str, Any]) -> None:
    if path.suffix in NPZ_SUFFIXES:
        # Each array back in its own dtype: a float32 model stays float32, counters stay integers.
        arrays: dict[str, Any] = {k: floats[k].astype(v.dtype) if k in floats else v for k, v in raw.items()}
        np.savez(path, **arrays)  # (np.savez's stubs type **kwds loosely)
        return
    torch = _torch()
    out = {k: torch.from_numpy(floats[k]).to(v.dtype) if k in floats else v for k, v in raw.items()}
    torch.save(out, path)


def apply_strategy(
    strategy: Mapping[str, Any],
    average: Path,
    global_model: Path,
    state_path: Path | None,
    *,
    round_no: int,
) -> Path:
    """Replace the FedAvg ``average`` by the server step from ``global_model``; write the new state.

    ``round_no`` is the round being reduced (from 0). Returns the new state's file
    (``server_state.npz`` beside ``average``).

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
    previous = load_state(state_path, name, sorted(x_avg))
    model, state = server_step(name, params, x_global, x_avg, previous, round_no=round_no)
    _write(average, model, raw)
    out = average.parent / SERVER_STATE_NAME
    arrays: dict[str, Any] = dict(state)  # np.savez's stubs type **kwds loosely
    np.savez(out, **arrays)
    return out
