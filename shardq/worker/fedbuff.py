"""FedBuff's server step: the global model moves by the buffer's staleness-weighted client deltas.

For version v's buffer of K applied updates i, each trained from base version b_i (τ_i = v − b_i):

    Δ = Σ_i n_i · s(τ_i) · (x_i − x_{b_i}) / Σ_i n_i
    x_{v+1} = x_v + server_lr · Δ

n_i is the update's ``num_samples`` and s(τ) the staleness weight (``shardq.core.fedbuff_params``),
computed by the aggregator when it recorded the update and carried in the reduce's inputs. This is
Algorithm 1 of the FedBuff paper (Nguyen et al., AISTATS 2022) with FedAvg's sample weights: with
τ = 0 everywhere and server_lr 1 it is x_v + Σ n_i (x_i − x_v) / Σ n_i = Σ n_i x_i / Σ n_i, FedAvg.
FLSim divides s(τ) by s(1) (its ``avg_staleness``); that constant folds into ``server_lr``.

With a ``model_average`` ("ema", "polynomial") the reduce also keeps the average of the versions
(``average_step``), which it scores and the job returns; the version itself stays the clients' base.

Streams: one client model and its base model at a time (bases are cached per version, and a buffer
names at most ``max_staleness`` + 1 of them); floating entries in float64, saved in their own dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shardq.core.fedbuff_params import AVERAGE_DIR
from shardq.worker.reduce import ModelError
from shardq.worker.strategies import _read, _write

Arrays = dict[str, np.ndarray]


def server_step(
    global_model: Path,
    updates: Sequence[Mapping[str, Any]],
    fetch: Callable[[str, str], Path],
    out: Path,
    *,
    server_lr: float,
) -> Path:
    """Write x_{v+1} to ``out`` from ``global_model`` (x_v) and the buffer's ``updates``.

    Parameters
    ----------
    global_model:
        Version v's model, downloaded.
    updates:
        The reduce inputs' ``fedbuff`` rows: ``model_uri``, ``base_model_uri``, ``num_samples``,
        ``staleness_weight``, ``client``, ``seq``.
    fetch:
        ``fetch(uri, name) → local path`` (the worker's download into the task's scratch folder).
    out:
        Where x_{v+1} goes.
    server_lr:
        The server's step size.

    Raises
    ------
    ModelError
        No updates, models whose entries or shapes differ from the global model's, or a delta that
        is not finite (named by client and update number).
    """
    if not updates:
        raise ModelError("a FedBuff reduce got no applied updates")
    x, raw = _read(global_model)
    total = float(sum(int(u["num_samples"]) for u in updates))
    if total <= 0:
        raise ModelError("the buffer's updates report num_samples 0: return num_samples from train()")
    acc: Arrays = {k: np.zeros_like(v) for k, v in x.items()}
    bases: dict[str, Arrays] = {}
    for i, u in enumerate(updates):
        base_uri = str(u["base_model_uri"])
        if base_uri not in bases:
            bases[base_uri], _ = _read(fetch(base_uri, f"base-{len(bases):04d}{Path(base_uri).suffix}"))
        client_path = fetch(str(u["model_uri"]), f"update-{i:06d}{Path(str(u['model_uri'])).suffix}")
        model, _ = _read(client_path)
        client_path.unlink(missing_ok=True)
        where = f"client {u.get('client')} update {u.get('seq')}"
        _check_entries(x, model, where)
        factor = int(u["num_samples"]) * float(u["staleness_weight"]) / total
        base = bases[base_uri]
        for k in acc:
            delta = model[k] - base[k]
            if not np.isfinite(delta).all():
                raise ModelError(f"{where}: entry {k!r} of its delta is not finite (NaN or inf)")
            acc[k] += factor * delta
    new = {k: x[k] + server_lr * acc[k] for k in x}
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(out, new, raw)
    return out


def _check_entries(x: Arrays, model: Arrays, where: str) -> None:
    if sorted(model) != sorted(x) or any(model[k].shape != x[k].shape for k in x):
        raise ModelError(
            f"{where} has entries { {k: v.shape for k, v in model.items()} }, the global model "
            f"{ {k: v.shape for k, v in x.items()} }: every client must save the model's entries"
        )


def average_step(model: Path, average: Mapping[str, Any], fetch: Callable[[str, str], Path]) -> Path:
    """Write the average of the versions beside ``model`` (x_{v+1}, just made), in ``AVERAGE_DIR``
    under the same name; returns its path (``model_average`` "ema" or "polynomial").

    x̄_{v+1} = d·x̄_v + (1 − d)·x_{v+1} with d = ``average["decay"]`` (the aggregator's, per version:
    ``fedbuff_params.average_decay_at``; constant for "ema") and x̄_v downloaded from
    ``average["previous_uri"]``; x̄_1 = x_1 (no previous). Floating entries in float64, saved in
    the model's dtype; the others (counters) are x_{v+1}'s. Raises ``ModelError`` when the previous
    average's entries differ from the model's."""
    x, raw = _read(model)
    out = model.parent / AVERAGE_DIR / model.name
    previous = average.get("previous_uri")
    if previous:
        decay = float(average["decay"])
        path = fetch(str(previous), f"average-previous{model.suffix}")
        before, _ = _read(path)
        path.unlink(missing_ok=True)
        _check_entries(x, before, f"the previous average {previous}")
        x = {k: decay * before[k] + (1.0 - decay) * x[k] for k in x}
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(out, x, raw)
    return out
