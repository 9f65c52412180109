"""Where an asynchronous sweep's new rung-0 trials come from (``shardq.core.async_sweep`` asks a
``TrialSource`` when a slot has no promotion to take): the grid, a list, seeded random samples, or
a sampler such as Optuna's.

Plugging in a trial source
--------------------------
``register_trial_source(method, factory)`` maps a ``search.method`` to a factory
``factory(request) -> TrialSource``; listing the method in ``request_fields.ASYNC_SEARCH_METHODS``
makes its sweeps run here without early stopping too (every trial one task, up to
``max_parallel`` in flight). A source
gets ``SweepRecords`` (the request, the trials drawn so far with their hyperparameters, which of
them are still pending, and every recorded outcome) and returns the next trial's hyperparameters,
or None when it has no more. It must be deterministic given the records (a pass that loses a race
asks again on newer records); the driver caps the draws at ``request.task_count``. A source may
also define ``task_params(trial, drawn) -> dict``: what the trial's tasks carry when that differs
from its draw (Optuna's source draws a small record of when the trial was asked, and its tasks
carry the job's log up to that ask, from which the worker asks the sampler:
``shardq.core.optuna_search``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from shardq.core import search
from shardq.core.contracts import ShardResult, TrainingRequest


@dataclass(frozen=True)
class SweepRecords:
    """What a trial source may read to choose the next rung-0 trial.

    ``drawn``: trial index → hyperparameters, of every rung-0 trial decided so far (indexes
    ``0 … len(drawn) - 1``; the next draw is trial ``len(drawn)``); ``results``: every recorded
    train outcome, any rung (``round`` is the rung, ``shard_id`` the trial; ``status``
    ``succeeded``, ``diverged`` (non-finite objective) or ``failed``).
    """

    request: TrainingRequest
    drawn: Mapping[int, Mapping[str, Any]]
    results: Sequence[ShardResult]

    @property
    def pending(self) -> frozenset[int]:
        """Trials drawn whose rung-0 outcome is not recorded yet (queued or running)."""
        done = {r.shard_id for r in self.results if r.round == 0}
        return frozenset(t for t in self.drawn if t not in done)

    def latest(self) -> dict[int, ShardResult]:
        """Each trial's outcome at the furthest rung it reached (a failure only where nothing else)."""
        out: dict[int, ShardResult] = {}
        for r in sorted(self.results, key=lambda r: r.round):
            if r.status != "failed" or r.shard_id not in out:
                out[r.shard_id] = r
        return out


class TrialSource(Protocol):
    """Yields the next rung-0 trial's hyperparameters given the job's records (see the module doc)."""

    def next_trial(self, records: SweepRecords) -> dict[str, Any] | None:
        """Hyperparameters of trial ``len(records.drawn)``, or None when the source has no more."""
        ...


@dataclass(frozen=True)
class EnumeratedSource:
    """Grid, list and random search: trial ``i`` is ``search.trial_params(request, i)`` (a grid
    point in order, a listed trial, or the seeded sample ``i``), whatever the results say."""

    request: TrainingRequest

    def next_trial(self, records: SweepRecords) -> dict[str, Any] | None:
        index = len(records.drawn)
        return search.trial_params(self.request, index) if index < self.request.task_count else None


SourceFactory = Callable[[TrainingRequest], TrialSource]


def _optuna_source(request: TrainingRequest) -> TrialSource:
    """Optuna's samplers (``shardq.core.optuna_search``): imported only by the sweeps that use it."""
    from shardq.core.optuna_search import OptunaSource

    return OptunaSource(request)


_SOURCES: dict[str, SourceFactory] = {
    "grid": EnumeratedSource,
    "random": EnumeratedSource,
    "optuna": _optuna_source,
}


def register_trial_source(method: str, factory: SourceFactory) -> None:
    """Make ``search.method == method`` draw its asynchronous sweeps' trials from ``factory(request)``
    (list the method in ``request_fields.ASYNC_SEARCH_METHODS`` too when its sweeps run here
    without early stopping)."""
    _SOURCES[method] = factory


def trial_source(request: TrainingRequest) -> TrialSource:
    """The trial source of the request's ``search.method`` (grid when it has none)."""
    method = request.search.method if request.search is not None else "grid"
    return _SOURCES[method](request)


__all__ = [
    "EnumeratedSource",
    "SourceFactory",
    "SweepRecords",
    "TrialSource",
    "register_trial_source",
    "trial_source",
]
