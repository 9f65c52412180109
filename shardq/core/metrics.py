"""Pure aggregation math: round summaries, sweep leaderboards, map manifests.

No AWS here: these functions take recorded results and return JSON-ready data,
so they are tested (and reasoned about) without a network.

Everything that summarizes a round or a job folds the results in one pass with O(1) memory
(``MetricsAccumulator``, ``RoundAccumulator``): a round of a million shards is read page by
page, never held. Lists that would grow with the shard count (a round's failed shards) keep
their first ``LISTED_MAX`` entries and say how many there were.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shardq.core.contracts import Objective, ShardResult, finite_or_name

# A round summary lists at most this many failed shard ids (the lowest ones): the summary is a
# DynamoDB item (400 KB) and part of the manifest; ``shards_failed`` has the count.
LISTED_MAX = 1_000


@dataclass
class _Moments:
    """Running sums of one metric: weighted sum, weight, plain sum, min, max, count."""

    weighted: float = 0.0
    weight: float = 0.0
    plain: float = 0.0
    low: float = float("inf")
    high: float = float("-inf")
    count: int = 0


@dataclass
class MetricsAccumulator:
    """``weighted_metrics`` folded one result at a time (memory: one entry per metric name).

    The sums run in the order the results arrive, as ``sum`` over a list would, so the figures
    equal the list-based ones exactly.
    """

    _metrics: dict[str, _Moments] = field(default_factory=dict)

    def add(self, result: ShardResult) -> None:
        """Fold one result in (failed results are ignored, and so is a non-finite value: a sweep
        trial with a finite objective may carry one, and a mean must stay a number)."""
        if result.status != "succeeded":
            return
        for name, value in result.metrics.items():
            if not math.isfinite(value):
                continue
            m = self._metrics.setdefault(name, _Moments())
            m.weighted += value * result.num_samples
            m.weight += result.num_samples
            m.plain += value
            m.low = min(m.low, value)
            m.high = max(m.high, value)
            m.count += 1

    def merge(self, other: MetricsAccumulator) -> None:
        """Fold in another accumulator's sums (a later range of the same round)."""
        for name, o in other._metrics.items():
            m = self._metrics.setdefault(name, _Moments())
            m.weighted += o.weighted
            m.weight += o.weight
            m.plain += o.plain
            m.low = min(m.low, o.low)
            m.high = max(m.high, o.high)
            m.count += o.count

    def state(self) -> dict[str, list[float]]:
        """JSON-ready running sums (per metric: weighted, weight, plain, min, max, count)."""
        return {n: [m.weighted, m.weight, m.plain, m.low, m.high, m.count] for n, m in self._metrics.items()}

    @classmethod
    def from_state(cls, state: dict[str, list[float]]) -> MetricsAccumulator:
        """The accumulator ``state()`` describes."""
        acc = cls()
        for name, (weighted, weight, plain, low, high, count) in state.items():
            acc._metrics[name] = _Moments(weighted, weight, plain, low, high, int(count))
        return acc

    def result(self) -> dict[str, dict[str, float]]:
        """Per metric (sorted by name): weighted mean, min, max, count."""
        out: dict[str, dict[str, float]] = {}
        for name in sorted(self._metrics):
            m = self._metrics[name]
            out[name] = {
                "mean": m.weighted / m.weight if m.weight else m.plain / m.count,
                "min": m.low,
                "max": m.high,
                "count": float(m.count),
            }
        return out


def weighted_metrics(results: Iterable[ShardResult]) -> dict[str, dict[str, float]]:
    """Per metric: mean weighted by ``num_samples``, plus min and max, over succeeded results.

    A metric missing from some results (or non-finite in them) is averaged over the results that
    have it finite.
    When every weight is 0 the plain mean is used. One pass, O(metric names) memory.
    """
    acc = MetricsAccumulator()
    for r in results:
        acc.add(r)
    return acc.result()


@dataclass
class RoundAccumulator:
    """``summarize_round`` folded one result at a time: O(1) memory in the round's size.

    Failed shard ids are kept up to ``listed_max`` (the lowest, in a bounded heap).
    """

    listed_max: int = LISTED_MAX
    succeeded: int = 0
    failed: int = 0
    # Sweep trials with a non-finite objective: done, neither succeeded nor failed (shardq.core.verdicts).
    diverged: int = 0
    num_samples: int = 0
    duration_sum: float = 0.0
    duration_max: float = 0.0
    metrics: MetricsAccumulator = field(default_factory=MetricsAccumulator)
    # Max-heap (negated ids) of the lowest failed shard ids seen.
    _failed_ids: list[int] = field(default_factory=list)

    def add(self, result: ShardResult) -> None:
        """Fold one train result in."""
        if result.status == "diverged":
            self.diverged += 1
            return
        if result.status != "succeeded":
            self.failed += 1
            if len(self._failed_ids) < self.listed_max:
                heapq.heappush(self._failed_ids, -result.shard_id)
            elif self._failed_ids and -self._failed_ids[0] > result.shard_id:
                heapq.heapreplace(self._failed_ids, -result.shard_id)
            return
        self.succeeded += 1
        self.num_samples += result.num_samples
        self.duration_sum += result.duration_s
        self.duration_max = max(self.duration_max, result.duration_s)
        self.metrics.add(result)

    def merge(self, other: RoundAccumulator) -> None:
        """Fold in another range of the same round (shard ranges are disjoint)."""
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.diverged += other.diverged
        self.num_samples += other.num_samples
        self.duration_sum += other.duration_sum
        self.duration_max = max(self.duration_max, other.duration_max)
        self.metrics.merge(other.metrics)
        lowest = heapq.nsmallest(self.listed_max, [-i for i in self._failed_ids + other._failed_ids])
        self._failed_ids = [-i for i in lowest]
        heapq.heapify(self._failed_ids)

    def state(self) -> dict[str, Any]:
        """JSON-ready state: what a range of a round leaves for the round's summary (bounded:
        ``listed_max`` failed ids at most, one entry per metric name)."""
        return {
            "succeeded": self.succeeded,
            "failed": self.failed,
            "diverged": self.diverged,
            "num_samples": self.num_samples,
            "duration_sum": self.duration_sum,
            "duration_max": self.duration_max,
            "metrics": self.metrics.state(),
            "failed_ids": sorted(-i for i in self._failed_ids),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RoundAccumulator:
        """The accumulator ``state()`` describes."""
        acc = cls(
            succeeded=int(state["succeeded"]),
            failed=int(state["failed"]),
            diverged=int(state.get("diverged", 0)),  # absent from digests written before it
            num_samples=int(state["num_samples"]),
            duration_sum=float(state["duration_sum"]),
            duration_max=float(state["duration_max"]),
            metrics=MetricsAccumulator.from_state(state["metrics"]),
        )
        acc._failed_ids = [-int(i) for i in state["failed_ids"]]
        heapq.heapify(acc._failed_ids)
        return acc

    def summary(self, round_no: int, started_at: str | None = None) -> dict[str, Any]:
        """The round's summary (``summarize_round``'s shape)."""
        out: dict[str, Any] = {
            "round": round_no,
            "shards_succeeded": self.succeeded,
            "shards_failed": self.failed,
            "failed_shards": sorted(-i for i in self._failed_ids),
            "num_samples": self.num_samples,
            "metrics": self.metrics.result(),
            "duration_s": {
                "sum": self.duration_sum,
                "max": self.duration_max,
                "mean": self.duration_sum / self.succeeded if self.succeeded else 0.0,
            },
            "started_at": started_at,
        }
        if self.diverged:  # only a sweep's trials can diverge: other summaries keep their shape
            out["shards_diverged"] = self.diverged
        if self.failed > len(self._failed_ids):
            out["failed_shards_truncated"] = True
        return out


def summarize_round(
    round_no: int, results: Iterable[ShardResult], started_at: str | None = None
) -> dict[str, Any]:
    """Summary of a round's train results: counts, samples, weighted metrics, durations.

    One pass over ``results`` (a list, or a generator paging through the table); lists at most
    ``LISTED_MAX`` failed shard ids (``failed_shards_truncated`` when there were more).
    """
    acc = RoundAccumulator()
    for r in results:
        acc.add(r)
    return acc.summary(round_no, started_at)


def leaderboard(
    results: Sequence[ShardResult], objective: Objective, trials: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Succeeded trials ranked by the objective, then trials without the metric, then diverged trials.

    A diverged trial (a non-finite objective, ``shardq.core.verdicts``) has ``objective`` null and
    its metrics as standard JSON can hold them (``"nan"``, ``"inf"``, ``"-inf"``); ``outcome``
    says which it is.
    """
    rows = []
    for r in results:
        if r.status not in ("succeeded", "diverged"):
            continue
        value = r.metrics.get(objective.metric)
        rows.append(
            {
                "trial": r.shard_id,
                "outcome": r.status,
                "hyperparameters": trials[r.shard_id] if r.shard_id < len(trials) else {},
                "objective": value if value is not None and math.isfinite(value) else None,
                "metrics": {k: finite_or_name(v) for k, v in r.metrics.items()},
                "artifact_uri": r.artifact_uri,
            }
        )
    sign = 1.0 if objective.direction == "minimize" else -1.0

    def rank(row: dict[str, Any]) -> tuple[int, float, int]:
        value = row["objective"]
        if row["outcome"] == "diverged":
            return (2, 0.0, row["trial"])
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
