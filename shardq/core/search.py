"""Sweeps: which hyperparameters each trial gets, and which trials a rung promotes.

* Grid and list search spaces enumerate (``planning.trial``); ``search.method = "random"``
  samples ``num_trials`` points, each coordinate a platform-independent uniform number from
  SHA-256 of ``seed:trial:parameter`` — the same trial always gets the same point, on any
  interpreter, so a retried or resumed rung plans the same tasks.
* Successive halving (``early_stopping``): rung ``k`` trains with budget
  ``min_budget · eta^k``; when a rung closes, its best ``entered // eta`` succeeded trials (by
  the objective) go on to the next rung, each from its own model, and the rest stop.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from shardq.core.budgets import trial_costs
from shardq.core.contracts import Objective, ShardResult, TrainingRequest


def _unit(seed: int, trial: int, name: str) -> float:
    """A uniform number in [0, 1) from ``seed:trial:name``."""
    digest = hashlib.sha256(f"{seed}:{trial}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def sample(search_space: dict[str, Any], seed: int, index: int) -> dict[str, Any]:
    """Trial ``index`` of a random search: one draw per parameter, in the space's key order."""
    params: dict[str, Any] = {}
    for name, dimension in search_space.items():
        u = _unit(seed, index, name)
        if isinstance(dimension, list):
            params[name] = dimension[min(len(dimension) - 1, int(u * len(dimension)))]
            continue
        ((dist, (low, high)),) = dimension.items()
        if dist == "uniform":
            params[name] = low + u * (high - low)
        elif dist == "log_uniform":
            params[name] = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
        else:  # int_uniform
            params[name] = int(low) + min(int(high) - int(low), int(u * (int(high) - int(low) + 1)))
    return params


def rank_key(objective: Objective) -> Any:
    """Sort key of succeeded results: best objective first, trials without the metric last."""
    sign = 1.0 if objective.direction == "minimize" else -1.0

    def key(r: ShardResult) -> tuple[int, float, int]:
        value = r.metrics.get(objective.metric)
        return (1, 0.0, r.shard_id) if value is None else (0, sign * value, r.shard_id)

    return key


def promote(request: TrainingRequest, rung_results: Sequence[ShardResult]) -> list[tuple[int, str | None]]:
    """The trials a closed rung sends to the next, best first: ``(trial, its model URI)``.

    ``entered // eta`` of the trials that entered the rung (at least one) and succeeded with the
    objective's metric; ties break by trial id, so the choice is deterministic.
    """
    assert request.early_stopping is not None and request.objective is not None
    scored = [r for r in rung_results if r.status == "succeeded" and request.objective.metric in r.metrics]
    keep = request.early_stopping.survivors(len(rung_results))
    best = sorted(scored, key=rank_key(request.objective))[:keep]
    return [(r.shard_id, r.model) for r in best]


def rung_budget(request: TrainingRequest, rung: int) -> int | None:
    """The budget of rung ``rung`` (None without early stopping)."""
    if request.early_stopping is None:
        return None
    return request.early_stopping.budgets[rung]


def rung_increments(request: TrainingRequest) -> list[int] | None:
    """The budget each rung's task trains: its rung's budget less the rung's before (a promoted
    trial resumes from its model); None without early stopping."""
    if request.early_stopping is None:
        return None
    budgets = request.early_stopping.budgets
    return [b - (budgets[k - 1] if k else 0) for k, b in enumerate(budgets)]


def rung_history(results: Sequence[ShardResult], request: TrainingRequest) -> dict[int, list[dict[str, Any]]]:
    """Per trial, what each rung it ran reported: ``{"rung", "budget", "status", "objective"}``."""
    assert request.objective is not None
    history: dict[int, list[dict[str, Any]]] = {}
    for r in sorted(results, key=lambda r: (r.shard_id, r.round)):
        history.setdefault(r.shard_id, []).append(
            {
                "rung": r.round,
                "budget": rung_budget(request, r.round),
                "status": r.status,
                "objective": _finite(r.metrics.get(request.objective.metric)),
            }
        )
    return history


def _finite(value: float | None) -> float | None:
    """A finite objective; None for a missing or non-finite one (a diverged trial: JSON has no NaN)."""
    return value if value is not None and math.isfinite(value) else None


def budget_spent(request: TrainingRequest, results: Sequence[ShardResult]) -> int:
    """Budget units (e.g. epochs) the sweep trained: each task adds its rung's increment over the
    rung before (a promoted trial resumes from its model); without early stopping, one a task."""
    increments = rung_increments(request)
    if increments is None:
        return len(results)
    return sum(increments[r.round] for r in results)


def trial_params(request: TrainingRequest, index: int) -> dict[str, Any]:
    """The hyperparameters trial ``index`` adds to the request's: a grid point, a listed trial,
    or a random sample."""
    space = request.search_space
    assert space is not None
    if request.search is not None and request.search.method == "random":
        assert isinstance(space, dict)
        return sample(space, request.search.seed, index)
    if request.search is not None and request.search.method == "optuna":
        raise ValueError("an Optuna trial's params are asked on its worker: read its result's params")
    return trial(space, index)


def trial_table(request: TrainingRequest, results: Sequence[ShardResult]) -> list[dict[str, Any]]:
    """Every trial's hyperparameters, by trial id: planned, or (an Optuna sweep) as the sampler asked
    them on the trial's worker, which reported them (``ShardResult.params``; {} before any result)."""
    if request.search is not None and request.search.method == "optuna":
        asked = {r.shard_id: r.params for r in results if r.params}
        return [dict(asked.get(i) or {}) for i in range(request.task_count)]
    return [trial_params(request, i) for i in range(request.task_count)]


def trial(search_space: dict[str, Any] | list[dict[str, Any]], index: int) -> dict[str, Any]:
    """The ``index``-th trial of a list, or of a grid in ``itertools.product`` order of its keys."""
    if isinstance(search_space, list):
        return dict(search_space[index])
    params: dict[str, Any] = {}
    # Mixed-radix decode of the index: the last key varies fastest, as in itertools.product.
    for name in reversed(list(search_space)):
        values = search_space[name]
        index, pos = divmod(index, len(values))
        params[name] = values[pos]
    return {name: params[name] for name in search_space}


def sweep_section(
    request: TrainingRequest, results: Sequence[ShardResult], copies: Mapping[int, int] | None = None
) -> dict[str, Any]:
    """The manifest's sweep part: each trial's furthest rung, ranked; best; rung histories; budget.
    ``copies``: what each trial's backup copies' losing runs cost (``JobStore.copy_costs``), in its
    ``cost_usd``.

    A trial that reached a later rung ranks above every trial stopped earlier (it beat them at
    the rung where they stopped); within a rung, by the objective. A trial that diverged (at any
    rung) ranks after every finite trial, and is never ``best``.
    """
    from shardq.core.metrics import leaderboard

    assert request.objective is not None
    last: dict[int, ShardResult] = {}
    for r in sorted(results, key=lambda r: r.round):
        if r.status != "failed" or r.shard_id not in last:
            last[r.shard_id] = r
    trials = trial_table(request, results)
    history = rung_history(results, request)
    by_rung: dict[int, list[ShardResult]] = {}
    for r in last.values():
        by_rung.setdefault(r.round, []).append(r)
    board: list[dict[str, Any]] = []
    diverged: list[dict[str, Any]] = []
    costs = trial_costs(results, copies)  # what each trial's runs cost, every rung (budgets)
    for rung in sorted(by_rung, reverse=True):
        for ranked in leaderboard(by_rung[rung], request.objective, trials):
            row = {**ranked, "rung": rung, "rungs": history.get(ranked["trial"], [])}
            if ranked["trial"] in costs:
                row["cost_usd"] = costs[ranked["trial"]]
            (diverged if row["outcome"] == "diverged" else board).append(row)
    best = board[0] if board else None
    board.extend(sorted(diverged, key=lambda row: row["trial"]))
    section: dict[str, Any] = {
        "objective": {"metric": request.objective.metric, "direction": request.objective.direction},
        "leaderboard": board,
        "best": best,
        "diverged_count": len(diverged),
    }
    if request.early_stopping is not None:
        es = request.early_stopping
        section["early_stopping"] = {
            "budgets": es.budgets,
            "budget_param": es.budget_param,
            "budget_spent": budget_spent(request, results),
            "budget_without_stopping": request.task_count * es.budgets[-1],
        }
        if es.method == "asha":  # which rule promoted (``shardq.core.asha_rules``): views say it
            section["early_stopping"].update(method="asha", promotion=es.promotion)
    return section
