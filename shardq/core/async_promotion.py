"""ASHA's next promotion over a sweep's recorded results (pure): which trial goes on to which rung,
ranked by the request's objective, under the promotion rule of ``shardq.core.asha_rules``.

Split from ``shardq.core.async_sweep``, whose passes ask it when a slot frees (and which re-exports
these names); deciding it exactly once is the pass's (``JobStore.decide``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shardq.core import asha_rules, search
from shardq.core.contracts import ShardResult, TrainingRequest


def ranked(rung_results: Sequence[ShardResult], request: TrainingRequest) -> list[ShardResult]:
    """A rung's succeeded results with a finite objective, best first (ties by trial id)."""
    assert request.objective is not None
    metric = request.objective.metric
    finite = [
        r
        for r in rung_results
        if r.status == "succeeded" and r.metrics.get(metric) is not None and math.isfinite(r.metrics[metric])
    ]
    return sorted(finite, key=search.rank_key(request.objective))


@dataclass(frozen=True)
class Promotion:
    """Trial ``trial`` goes on to rung ``rung`` from ``model``: it ranked ``rank`` (0-based) of the
    ``known`` results its previous rung had, by ``rule`` (``"asha"`` or ``"drain"``)."""

    rung: int
    trial: int
    model: str | None
    known: int
    rank: int
    rule: str
    # What the trial reported as its hyperparameters (a sampler that asks on the worker), if anything.
    reported: dict[str, Any] | None = None


def next_promotion(
    request: TrainingRequest,
    by_rung: Mapping[int, Sequence[ShardResult]],
    decided: set[tuple[int, int]],
    *,
    drain: bool = False,
    order: Mapping[int, Sequence[ShardResult]] | None = None,
) -> Promotion | None:
    """ASHA's next promotion (the highest rung first), or None.

    ``decided``: ``(rung, trial)`` of every task already decided. A trial of rung ``k`` is
    promotable when it ranks in the top ``len(results of rung k) // eta`` finite results (with
    ``early_stopping.promotion "eager"``, the top ``max(1, …)``: ``shardq.core.asha_rules``) and is
    not decided at rung ``k + 1``. With ``drain`` (the sweep would end otherwise), a rung that
    promoted nobody promotes its best finite trial instead. ``order``: each rung's ``ranked``
    results, when the caller ranked them already (a pass ranks once, whatever lanes it fills).
    """
    es = request.early_stopping
    if es is None or es.method != "asha":
        return None
    top = len(es.budgets) - 1
    for k in reversed(range(top)):
        results = by_rung.get(k, [])
        best = order[k] if order is not None and k in order else ranked(results, request)
        if drain:
            promoted_any = any(rung == k + 1 for rung, _ in decided)
            if best and not promoted_any:
                r = best[0]
                return Promotion(k + 1, r.shard_id, r.model, len(results), 0, "drain", _reported(r))
            continue
        n = len(results)
        for rank, r in enumerate(best[: asha_rules.promotable(es, n)]):
            if (k + 1, r.shard_id) not in decided:
                return Promotion(k + 1, r.shard_id, r.model, n, rank, asha_rules.rule_of(es, n), _reported(r))
    return None


def _reported(r: ShardResult) -> dict[str, Any] | None:
    """The hyperparameters a result reports for its trial, when its worker asked them itself."""
    params = getattr(r, "params", None)
    return dict(params) if isinstance(params, dict) and params else None


def by_rung(results: Sequence[ShardResult]) -> dict[int, list[ShardResult]]:
    """Train outcomes grouped by rung."""
    out: dict[int, list[ShardResult]] = {}
    for r in results:
        if r.task_type == "train":
            out.setdefault(r.round, []).append(r)
    return out


__all__ = ["Promotion", "by_rung", "next_promotion", "ranked"]
