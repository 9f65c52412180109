"""The one builder of TrainingRequest payloads for tests (also the ``make_request`` fixture)."""

from __future__ import annotations

from typing import Any

SWEEP_SPACE = {"lr": [0.3, 0.1, 0.03], "l2": [0.0, 0.01, 0.1]}


def make_request(
    kind: str = "data_parallel",
    *,
    job_id: str | None = "job",
    shards: int = 4,
    num_samples: int | None = None,
    uri: str = "s3://data/set",
    **fields: Any,
) -> dict[str, Any]:
    """A valid request of ``kind`` over ``shards`` shards (a 3×3 grid for a sweep).

    Any field may be given or overridden; ``None`` removes it (e.g. ``sharding=None``).
    """
    payload: dict[str, Any] = {
        "job_id": job_id,
        "kind": kind,
        "dataset": {"uri": uri, "num_samples": num_samples or 100 * shards},
    }
    if kind == "sweep":
        payload["search_space"] = SWEEP_SPACE
        payload["objective"] = {"metric": "loss", "direction": "minimize"}
    else:
        payload["sharding"] = {"shard_count": shards}
    payload.update(fields)
    return {k: v for k, v in payload.items() if v is not None}
