"""FedBuff's server step with CA2FL's cached update calibration (``strategy.calibration: "cached"``).

Wang et al., "Tackling the Data Heterogeneity in Asynchronous Federated Learning with Cached
Update Calibration", ICLR 2024, Algorithm 1. The server keeps each client's latest applied delta
h_j (a client not seen yet has h_j = 0). For version v's buffer of applied updates i (each the
delta Δ_i = x_i − x_{b_i} of a client model from the version b_i it trained from):

    h̄ = Σ_j p_j h_j                               over every client j, as the buffer opens
    v  = h̄ + Σ_i w_i (Δ_i − h_{c(i)})              h_{c(i)} ← Δ_i after each update, in order
    x_{v+1} = x_v + server_lr · v

with w_i = n_i · s(τ_i) / Σ_i n_i (FedBuff's weights, ``shardq.worker.fedbuff``) and p_j = n_j / Σ_j n_j
(FedAvg's sample weights; until every client was seen, each unseen one counts as the mean of
those seen, so with equal shards p_j = 1/N, the paper's). A client twice in one buffer subtracts its
first update from its second, as the paper's server does (it updates the cache on arrival).
With ``cache_weight: "staleness"`` (``weigh_cache``) the first term is s̄·h̄, s̄ = Σ_i w_i: each
update's whole calibrated estimate h̄ + Δ_i − h_{c(i)} is weighted by w_i, as FedBuff weights the
update itself (the paper has no staleness weights; with every s = 1 the two forms agree); it keeps
the step's fixed point and lowers its gain when the buffer is stale (docs/ARCHITECTURE.md).
With K = N, τ = 0 and server_lr 1 every client is in every buffer once and v = Σ_i n_i Δ_i / Σ n_i:
synchronous FedAvg.

Nothing is cached as a copy of a delta: h_j *is* client j's latest applied update, whose model and
base model are already artifacts; the aggregator names it in the reduce's inputs (``previous``,
``shardq.core.fedbuff_calibration``), recorded exactly once like every update, so a duplicated
or replayed update is never cached twice. What the reduce keeps is the running sum S = Σ_j n_j h_j
and each seen client's n_j, in ``calibration.npz`` beside the model it makes (version v + 1's,
under the reduce's own versioned prefix), written byte for byte the same by a retried reduce
(fixed order, float64, a zip with fixed timestamps). The next reduce reads it (``state_uri``).
"""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shardq.worker.fedbuff import _check_entries
from shardq.worker.reduce import ModelError
from shardq.worker.strategies import _read, _write

CALIBRATION_NAME = "calibration.npz"
_SUM, _CLIENTS, _SAMPLES = "sum:", "__clients__", "__samples__"
Arrays = dict[str, np.ndarray]


def read_state(path: Path | None, like: Arrays) -> tuple[Arrays, dict[int, int]]:
    """``(S, {client: n_j})`` from ``calibration.npz``; zeros and no client for version 0 (None).

    Raises ``ModelError`` when its sums do not have the global model's entries and shapes."""
    if path is None:
        return {k: np.zeros_like(v) for k, v in like.items()}, {}
    with np.load(path) as data:
        sums = {k[len(_SUM) :]: data[k].astype(np.float64) for k in data.files if k.startswith(_SUM)}
        seen = {int(c): int(n) for c, n in zip(data[_CLIENTS], data[_SAMPLES], strict=True)}
    _check_entries(like, sums, f"the calibration state {path.name}")
    return sums, seen


def write_state(path: Path, sums: Arrays, seen: Mapping[int, int]) -> Path:
    """Write ``calibration.npz`` deterministically: the same state gives the same bytes (sorted
    entries, fixed zip timestamps), so a retried reduce rewrites its key with what was there."""
    clients = sorted(seen)
    arrays: dict[str, np.ndarray] = {f"{_SUM}{k}": np.asarray(sums[k], np.float64) for k in sorted(sums)}
    arrays[_CLIENTS] = np.array(clients, dtype=np.int64)
    arrays[_SAMPLES] = np.array([seen[c] for c in clients], dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, array, allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())
    return path


def cached_step(
    global_model: Path,
    updates: Sequence[Mapping[str, Any]],
    fetch: Callable[[str, str], Path],
    out: Path,
    *,
    server_lr: float,
    calibration: Mapping[str, Any],
    weigh_cache: bool = False,
) -> Path:
    """Write x_{v+1} to ``out`` and the new calibration state beside it (``CALIBRATION_NAME``);
    returns ``out``.

    Parameters
    ----------
    global_model:
        Version v's model, downloaded.
    updates:
        The reduce inputs' ``fedbuff`` rows in (client, update) order, each with ``previous``:
        ``{"seq", "model_uri", "base_model_uri"}`` of the client's latest earlier applied update,
        or None when it has none.
    fetch:
        ``fetch(uri, name) → local path``.
    out:
        Where x_{v+1} goes.
    server_lr:
        The server's step size.
    calibration:
        The inputs' ``calibration``: ``clients`` (N) and ``state_uri`` (the previous reduce's
        ``calibration.npz``; None for version 0).
    weigh_cache:
        Weight each update's whole calibrated estimate h̄ + Δ_i − h_{c(i)} by w_i, so h̄ counts
        Σ_i w_i (``cache_weight: "staleness"``); False: h̄ at weight 1 (``"full"``).

    Raises
    ------
    ModelError
        No updates, models that differ from the global model, a delta that is not finite, or a
        calibration state that does not match the updates' history (named).
    """
    if not updates:
        raise ModelError("a FedBuff reduce got no applied updates")
    x, raw = _read(global_model)
    total = float(sum(int(u["num_samples"]) for u in updates))
    if total <= 0:
        raise ModelError("the buffer's updates report num_samples 0: return num_samples from train()")
    clients = int(calibration["clients"])
    state_uri = calibration.get("state_uri")
    state = fetch(str(state_uri), CALIBRATION_NAME) if state_uri else None
    sums, seen = read_state(state, x)
    # h̄ as the buffer opens: S / (N × the mean n of the clients seen), times Σ_i w_i when weighed
    scale = len(seen) / (clients * sum(seen.values())) if seen else 0.0
    if weigh_cache:
        scale *= sum(int(u["num_samples"]) * float(u["staleness_weight"]) for u in updates) / total
    step: Arrays = {k: scale * sums[k] for k in x}
    uses = Counter(str(u["base_model_uri"]) for u in updates)
    uses.update(str(u["previous"]["base_model_uri"]) for u in updates if u.get("previous") is not None)
    models = _Models(fetch, x, uses)
    for u in updates:
        client, where = int(u["client"]), f"client {u.get('client')} update {u.get('seq')}"
        delta = models.delta(str(u["model_uri"]), str(u["base_model_uri"]), where)
        previous = u.get("previous")
        if (previous is not None) != (client in seen):
            raise ModelError(
                f"{where}: the calibration state {'lacks' if previous else 'already has'} client "
                f"{client}'s cached update; the reduce inputs and {state_uri} disagree"
            )
        n, weight = int(u["num_samples"]), int(u["num_samples"]) * float(u["staleness_weight"]) / total
        cached: Arrays = {}
        if previous is not None:
            where_h = f"{where}'s cached update (its update {previous.get('seq')})"
            cached = models.delta(str(previous["model_uri"]), str(previous["base_model_uri"]), where_h)
        n_cached = seen.get(client, 0)
        for k in step:
            h = cached.get(k, 0.0)
            step[k] += weight * (delta[k] - h)
            sums[k] += n * delta[k] - n_cached * h
        seen[client] = n
    new = {k: x[k] + server_lr * step[k] for k in x}
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(out, new, raw)
    write_state(out.parent / CALIBRATION_NAME, sums, seen)
    return out


class _Models:
    """Deltas of downloaded models; a base model kept by URI until its last use (``uses``: how many
    deltas the reduce takes from each base), so a reduce holds the bases still to be used, not every
    version its cached updates trained from."""

    def __init__(self, fetch: Callable[[str, str], Path], like: Arrays, uses: Counter[str]) -> None:
        self.fetch, self.like, self.uses = fetch, like, uses
        self.bases: dict[str, Arrays] = {}
        self.count = 0

    def delta(self, model_uri: str, base_uri: str, where: str) -> Arrays:
        if base_uri not in self.bases:
            self.count += 1
            path = self.fetch(base_uri, f"base-{self.count:06d}{Path(base_uri).suffix}")
            self.bases[base_uri], _ = _read(path)
            path.unlink(missing_ok=True)
        self.count += 1
        path = self.fetch(model_uri, f"update-{self.count:06d}{Path(model_uri).suffix}")
        model, _ = _read(path)
        path.unlink(missing_ok=True)
        _check_entries(self.like, model, where)
        base = self.bases[base_uri]
        out = {k: model[k] - base[k] for k in self.like}
        self.uses[base_uri] -= 1
        if self.uses[base_uri] <= 0:
            del self.bases[base_uri]
        for k, d in out.items():
            if not np.isfinite(d).all():
                raise ModelError(f"{where}: entry {k!r} of its delta is not finite (NaN or inf)")
        return out
