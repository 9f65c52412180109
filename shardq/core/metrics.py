"""Pure aggregation math: round summaries, sweep leaderboards, map manifests.

No AWS here: these functions take recorded results and return JSON-ready data,
so they are tested (and reasoned about) without a network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shardq.core.contracts import Objective, ShardResult


def weighted_metrics(results: Sequence[ShardResult]) -> dict[str, dict[str, float]]:
    """Per metric: mean weighted by ``num_samples``, plus min and max, over succeeded results.

    A metric missing from some results is averaged over the results that have it.
    When every weight is 0 the plain mean is used.
    """
    out: dict[str, dict[str, float]] = {}
    names = sorted({name for r in results if r.status == "succeeded" for name in r.metrics})
    for name in names:
        rows = [
            (r.metrics[name], r.num_samples) for r in results if r.status == "succeeded" and name in r.metrics
        ]
        weight = sum(w for _, w in rows)
        mean = sum(v * w for v, w in rows) / weight if weight else sum(v for v, _ in rows) / len(rows)
        out[name] = {
            "mean": mean,
            "min": min(v for v, _ in rows),
            "max": max(v for v, _ in rows),
            "count": float(len(rows)),
        }
    return out


def summarize_round(
    round_no: int, results: Sequence[ShardResult], started_at: str | None = None
) -> dict[str, Any]:
    """Summary of a round's train results: counts, samples, weighted metrics, durations."""
    ok = [r for r in results if r.status == "succeeded"]
    durations = [r.duration_s for r in ok]
    return {
        "round": round_no,
        "shards_succeeded": len(ok),
        "shards_failed": len(results) - len(ok),
        "failed_shards": sorted(r.shard_id for r in results if r.status != "succeeded"),
        "num_samples": sum(r.num_samples for r in ok),
        "metrics": weighted_metrics(ok),
        "duration_s": {
            "sum": sum(durations),
            "max": max(durations, default=0.0),
            "mean": sum(durations) / len(durations) if durations else 0.0,
        },
        "started_at": started_at,
    }


def leaderboard(
    results: Sequence[ShardResult], objective: Objective, trials: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Succeeded trials ranked by the objective; trials without the metric rank last."""
    rows = []
    for r in results:
        if r.status != "succeeded":
            continue
        rows.append(
            {
                "trial": r.shard_id,
                "hyperparameters": trials[r.shard_id] if r.shard_id < len(trials) else {},
                "objective": r.metrics.get(objective.metric),
                "metrics": r.metrics,
                "artifact_uri": r.artifact_uri,
            }
        )
    sign = 1.0 if objective.direction == "minimize" else -1.0

    def rank(row: dict[str, Any]) -> tuple[int, float, int]:
        value = row["objective"]
        return (1, 0.0, row["trial"]) if value is None else (0, sign * value, row["trial"])

    return sorted(rows, key=rank)


def reduce_inputs(results: Sequence[ShardResult]) -> dict[str, Any]:
    """The claim check a reduce task reads: each succeeded shard's model file and weight.

    ``model_uri`` is the model alone (``ShardResult.model``); ``artifact_uri`` repeats it for
    workers that predate ``model_uri`` and read that key.
    """
    models = [
        {"shard_id": r.shard_id, "model_uri": r.model, "artifact_uri": r.model, "num_samples": r.num_samples}
        for r in sorted(results, key=lambda r: r.shard_id)
        if r.status == "succeeded" and r.model
    ]
    return {"models": models, "total_samples": sum(m["num_samples"] for m in models)}
