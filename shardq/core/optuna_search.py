"""Optuna sweeps (``search.method "optuna"``): the trial source and the ask/tell log, without Optuna.

An Optuna sweep runs as an asynchronous sweep (``shardq.core.async_sweep``): up to
``max_parallel`` trials in flight, and each recorded result frees a slot that the next trial
takes. The aggregator (a Lambda whose asset stays light) never imports Optuna. It decides *when*
each trial is asked — after which results — and the worker that trains the trial asks the sampler
(``shardq.worker.optuna_sampler``) by replaying the job's log up to that ask.

The log is the job's own records, in the order the sweep saw them:

* ``["ask", m]`` — trial ``m`` was drawn (a decision of the sweep, written once);
* ``["tell", m, "complete", value]`` — trial ``m`` finished with a finite objective;
* ``["tell", m, "fail"]`` — it failed, or diverged (a non-finite objective: Optuna's own
  ``optimize`` marks a NaN objective FAIL, and the sampler learns nothing from it);
* with ``early_stopping.method "asha"``: ``["report", m, budget, value]`` for each rung it
  finished (Optuna's intermediate values, at the rung's budget as the step), and
  ``["tell", m, "pruned"]`` when, at an ask, it ranks outside the top ``1/eta`` of its rung's
  results known then (what Optuna's ``SuccessiveHalvingPruner`` decides at a report); a trial that
  finishes the top rung is ``complete``.

Each draw stores only what it adds (``{"shardq_optuna": {"trial": m, "events": [...]}}`` as the
trial's params, on the sweep's decision item): the events visible now that no earlier draw told,
in trial order. So every outcome is told exactly once, duplicates and late results included (they
are recorded once), and the log of trial ``n`` is the draws ``0 … n`` put end to end
(``task_log``), which the task carries to its worker. A retried trial that was told ``fail``
stays failed for the sampler, as a trial Optuna marked FAIL (its retried result still ranks).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the request module imports this one for its checks
    from shardq.core.contracts import ShardResult, TrainingRequest

# The key of a trial's draw in its params and of its log in its task's hyperparameters.
TRIAL_KEY = "shardq_optuna"
SAMPLERS = ("tpe", "cmaes", "gp", "random")
DEFAULT_SAMPLER = "tpe"
# Trials an Optuna sweep may ask: a cold worker replays every ask before its own (≈ 3 s for 200 TPE
# trials here), and every task carries the log (≈ 50 bytes a trial).
MAX_OPTUNA_TRIALS = 1000
# Optuna's CategoricalDistribution holds these types only.
CATEGORICAL_TYPES = (str, int, float, bool, type(None))
LOG_VERSION = 1


def problems(request_data: dict[str, Any], search: dict[str, Any]) -> list[str]:
    """What is wrong with an Optuna sweep's request beyond the common sweep checks (empty: fine).

    ``search`` is the request's ``search`` object (its ``method`` is ``"optuna"``).
    """
    out: list[str] = []
    sampler = search.get("sampler", DEFAULT_SAMPLER)
    if sampler not in SAMPLERS:
        import difflib

        hint = difflib.get_close_matches(str(sampler), SAMPLERS, n=1)
        fix = f"did you mean '{hint[0]}'?" if hint else f"allowed: {', '.join(SAMPLERS)}"
        out.append(f"search.sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r:.60}: {fix}")
    if "num_trials" not in search:
        out.append('search.num_trials is required for method "optuna": how many trials to ask the sampler')
    elif isinstance(search["num_trials"], int) and search["num_trials"] > MAX_OPTUNA_TRIALS:
        out.append(
            f'search.num_trials must be at most {MAX_OPTUNA_TRIALS} for method "optuna" (every ask '
            f'replays the trials before it), got {search["num_trials"]}; lower it, or use method "random"'
        )
    space = request_data.get("search_space")
    if isinstance(space, dict):  # a list of trials: the common check names it
        for name, dim in space.items():
            if isinstance(dim, list) and any(not isinstance(v, CATEGORICAL_TYPES) for v in dim):
                out.append(
                    f"search_space.{name}: Optuna's categorical choices are strings, numbers, booleans or "
                    "null; give those (an object or a list as a choice cannot be asked)"
                )
        numeric = [n for n, dim in space.items() if isinstance(dim, dict)]
        if sampler == "cmaes" and space and not numeric:
            out.append(
                'search.sampler "cmaes" needs at least one numeric parameter ({"uniform": [lo, hi]}, '
                '"log_uniform" or "int_uniform"): CMA-ES cannot sample categorical lists; use sampler "tpe"'
            )
        if TRIAL_KEY in space:
            out.append(f"search_space.{TRIAL_KEY} is reserved for shardq's Optuna log; rename the parameter")
    hyper = request_data.get("hyperparameters")
    if isinstance(hyper, dict) and TRIAL_KEY in hyper:
        out.append(f"hyperparameters.{TRIAL_KEY} is reserved for shardq's Optuna log; rename it")
    es = request_data.get("early_stopping")
    if isinstance(es, dict) and es.get("method", "successive_halving") != "asha":
        out.append(
            'early_stopping.method must be "asha" with search.method "optuna" (Optuna\'s pruners decide as '
            'each trial reports, not when a rung closes); set method "asha" or remove early_stopping'
        )
    return out


def _objective(result: ShardResult, metric: str) -> float | None:
    """The result's objective when it succeeded with a finite one (None: the sampler sees a failure)."""
    value = result.metrics.get(metric)
    if result.status != "succeeded" or value is None or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class OptunaSource:
    """The trial source of an Optuna sweep: each draw is the events since the last draw, then an ask.

    Deterministic given the records (``async_sweep.TrialSource``): the events are those the
    records show that the earlier draws did not tell, sorted by trial.
    """

    request: TrainingRequest

    def next_trial(self, records: Any) -> dict[str, Any] | None:
        """Trial ``len(records.drawn)``'s draw: ``{TRIAL_KEY: {"trial": n, "events": [...]}}``."""
        n = len(records.drawn)
        if n >= self.request.task_count:
            return None
        told = _told(records.drawn.values())
        return {TRIAL_KEY: {"trial": n, "events": new_events(self.request, records.results, told)}}

    def task_params(self, trial: int, drawn: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
        """What the task of ``trial`` carries as its params: the job's log up to its ask."""
        return {TRIAL_KEY: task_log(self.request, trial, drawn)}


def _told(draws: Any) -> tuple[set[int], set[tuple[int, int]]]:
    """Trials told (complete, fail, pruned) and ``(trial, step)`` reports in earlier draws."""
    finished: set[int] = set()
    reported: set[tuple[int, int]] = set()
    for params in draws:
        for event in (params.get(TRIAL_KEY) or {}).get("events", []):
            if event[0] == "tell":
                finished.add(int(event[1]))
            elif event[0] == "report":
                reported.add((int(event[1]), int(event[2])))
    return finished, reported


def new_events(
    request: TrainingRequest, results: Sequence[ShardResult], told: tuple[set[int], set[tuple[int, int]]]
) -> list[list[Any]]:
    """The events the records show beyond ``told``, trial by trial (ascending)."""
    assert request.objective is not None
    metric = request.objective.metric
    finished, reported = told
    es = request.early_stopping
    budgets = es.budgets if es is not None else [0]
    top = len(budgets) - 1
    by_trial: dict[int, dict[int, ShardResult]] = {}
    for r in results:
        if r.task_type == "train":
            by_trial.setdefault(r.shard_id, {})[r.round] = r
    cut = _pruning_cut(request, results) if es is not None else {}
    events: list[list[Any]] = []
    for trial in sorted(by_trial):
        if trial in finished:
            continue
        rungs = by_trial[trial]
        for rung in sorted(rungs):
            value = _objective(rungs[rung], metric)
            if value is None:
                events.append(["tell", trial, "fail"])
                break
            if rung == top:
                events.append(["tell", trial, "complete", value])
                break
            if (trial, budgets[rung]) not in reported:
                events.append(["report", trial, budgets[rung], value])
        else:
            last = max(rungs)
            if (last + 1) not in rungs and trial not in cut.get(last, set()):
                events.append(["tell", trial, "pruned"])
    return events


def _pruning_cut(request: TrainingRequest, results: Sequence[ShardResult]) -> dict[int, set[int]]:
    """Per rung, the trials in the top ``n // eta`` of its ``n`` results so far (ASHA's promotable
    set, ranked as ``async_sweep.ranked`` does: finite objectives, best first, ties by trial; a
    trial outside it is pruned for the sampler)."""
    from shardq.core.search import rank_key

    es, objective = request.early_stopping, request.objective
    assert es is not None and objective is not None
    rungs: dict[int, list[ShardResult]] = {}
    for r in results:
        if r.task_type == "train":
            rungs.setdefault(r.round, []).append(r)
    out: dict[int, set[int]] = {}
    for rung, rung_results in rungs.items():
        finite = [r for r in rung_results if _objective(r, objective.metric) is not None]
        best = sorted(finite, key=rank_key(objective))
        out[rung] = {r.shard_id for r in best[: len(rung_results) // es.eta]}
    return out


def task_log(request: TrainingRequest, trial: int, drawn: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """The log the worker replays to ask ``trial``: every draw ``0 … trial``, its events then its ask."""
    assert request.search is not None and request.objective is not None
    events: list[list[Any]] = []
    for m in range(trial + 1):
        draw = (drawn.get(m) or {}).get(TRIAL_KEY)
        if draw is None:
            raise ValueError(f"trial {m} has no Optuna draw: trial {trial}'s log cannot be built")
        events.extend(draw.get("events", []))
        events.append(["ask", m])
    return {
        "v": LOG_VERSION,
        "sampler": request.search.sampler or DEFAULT_SAMPLER,
        "seed": request.search.seed,
        "direction": request.objective.direction,
        "space": request.search_space,
        "events": events,
    }


__all__ = [
    "DEFAULT_SAMPLER",
    "MAX_OPTUNA_TRIALS",
    "SAMPLERS",
    "TRIAL_KEY",
    "OptunaSource",
    "new_events",
    "problems",
    "task_log",
]
