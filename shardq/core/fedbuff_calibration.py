"""The aggregator's half of CA2FL's cached update calibration (``strategy.calibration: "cached"``).

When a FedBuff buffer closes, its reduce inputs (``fedbuff.reduce_inputs``) gain what the worker's
calibrated step (``shardq.worker.fedbuff_cached``) needs and nothing numeric: for each applied
update, ``previous``, its client's latest earlier *applied* update (its model and the version model
it trained from: that delta is the client's cached update h_j), and ``calibration``: the client
count N and where the previous reduce left the running sum (``state_uri``). Looked up from the
recorded updates, each recorded exactly once (``shardq.core.store.fedbuff``): a duplicated or
replayed update is a duplicate there, so it is never anyone's cached update twice, and a late,
failed or surplus update (never applied) is never cached. Tensor math stays in the worker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shardq.core import planning
from shardq.core.store.fedbuff import APPLIED, FedBuffStore, Update

# The worker's file name for the running sum (``shardq.worker.fedbuff_cached.CALIBRATION_NAME``;
# the core imports no worker module).
CALIBRATION_NAME = "calibration.npz"
# Earlier update numbers looked up per client per call while walking back to an applied one.
_WALK = 4


def previous_applied(
    fb: FedBuffStore, job_id: str, keys: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], Update | None]:
    """For each ``(client, update number)``, that client's latest applied update with a smaller
    update number (None: none).

    Consistent batch reads, walking back ``_WALK`` update numbers a call: usually one call finds
    every one (a client's previous update was applied)."""
    out: dict[tuple[int, int], Update | None] = {}
    below = {(c, n): n for c, n in keys}  # look below this update number
    while below:
        keys = [(c, n) for (c, _), top in below.items() for n in range(max(0, top - _WALK), top)]
        found = fb.updates(job_id, keys)
        for (client, seq), top in list(below.items()):
            hit = next(
                (
                    found[(client, n)]
                    for n in range(top - 1, max(0, top - _WALK) - 1, -1)
                    if (client, n) in found and found[(client, n)].state == APPLIED
                ),
                None,
            )
            if hit is not None or top - _WALK <= 0:
                out[(client, seq)] = hit
                del below[(client, seq)]
            else:
                below[(client, seq)] = top - _WALK
    return out


def calibrate_inputs(
    inputs: dict[str, Any],
    fb: FedBuffStore,
    job_id: str,
    version: int,
    clients: int,
    layout: planning.Layout,
    model_of: Callable[[int], str | None],
) -> dict[str, Any]:
    """``inputs`` (``fedbuff.reduce_inputs``) with each row's ``previous`` and the ``calibration``
    section; ``model_of(b)`` is version b's global model URI (a cached update's base).

    Raises ``LookupError`` when a cached update's base version left no model."""
    rows = inputs["fedbuff"]
    keys = [(int(r["client"]), int(r["seq"])) for r in rows]
    found = previous_applied(fb, job_id, keys)
    out_rows = []
    for row, key in zip(rows, keys, strict=True):
        prev = found.get(key)
        previous: Mapping[str, Any] | None = None
        if prev is not None:
            base_uri = model_of(prev.base)
            if not base_uri:
                raise LookupError(f"version {prev.base}'s model is unknown: its reduce left none")
            previous = {
                "seq": prev.seq,
                "version": prev.version,
                "model_uri": prev.model_uri,
                "base_model_uri": base_uri,
            }
        out_rows.append({**row, "previous": previous})
    state_uri = layout.reduce_output(version - 1) + CALIBRATION_NAME if version else None
    return {
        **inputs,
        "fedbuff": out_rows,
        "models": out_rows,
        "calibration": {"method": "cached", "clients": clients, "state_uri": state_uri},
    }
