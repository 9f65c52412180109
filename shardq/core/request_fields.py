"""The parts of a TrainingRequest: dataset, objective, search, early stopping, participation,
quorum and strategy, with the search-space helpers the planner and the estimate share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from shardq.core.fedbuff_params import DEFAULTS as FEDBUFF_DEFAULTS
from shardq.core.fedbuff_params import RANGES as FEDBUFF_RANGES
from shardq.core.validation import (
    MAX_GATHERED_TASKS,
    MAX_SHARDS,
    _Value,
)


def _dimension_problem(name: str, value: Any, random: bool) -> str | None:
    """What is wrong with one search-space parameter (None when it is fine)."""
    if isinstance(value, list):
        return None if value else f"search_space.{name} must be a non-empty list of values"
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS:
        ((dist, bounds),) = value.items()
        if not random:
            return (
                f'search_space.{name} is a distribution ({dist}): set search.method "random" '
                "with search.num_trials, or give a list of values"
            )
        ok = isinstance(bounds, list) and len(bounds) == 2
        ok = ok and all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
        if not ok or not bounds[0] < bounds[1]:
            return f"search_space.{name}.{dist} must be [low, high] with low < high, got {bounds!r:.60}"
        if dist == "log_uniform" and bounds[0] <= 0:
            return f"search_space.{name}.log_uniform needs low > 0, got {bounds[0]}"
        if dist == "int_uniform" and not all(float(b).is_integer() for b in bounds):
            return f"search_space.{name}.int_uniform needs integer bounds, got {bounds}"
        return None
    return (
        f"search_space.{name} must be a non-empty list of values or one of "
        f'{{"uniform": [lo, hi]}}, {{"log_uniform": [lo, hi]}}, {{"int_uniform": [lo, hi]}}; '
        f"got {value!r:.60}"
    )


def max_round_tasks(kind: str | None) -> int:
    """The most tasks a round of ``kind`` may have: ``MAX_SHARDS`` for a map job (its round closes in
    ranges), ``MAX_GATHERED_TASKS`` for the kinds whose round one invocation gathers."""
    return MAX_SHARDS if kind == "map" else MAX_GATHERED_TASKS


def count_trials(search_space: dict[str, Any] | list[dict[str, Any]] | None) -> int:
    """Number of trials a grid or list search space expands to (grid product or list length)."""
    if search_space is None:
        return 0
    if isinstance(search_space, list):
        return len(search_space)
    total = 1
    for values in search_space.values():
        total *= len(values)
    return total


@dataclass(frozen=True, eq=False, repr=False)  # _Value's eq, hash and repr
class Dataset(_Value):
    """Where the training data is: a URI plus a sample count, or an explicit file list."""

    uri: str | None = None
    num_samples: int | None = None
    files: tuple[str, ...] | None = None

    @property
    def size(self) -> int:
        """Number of items the dataset is split over (samples or files)."""
        return len(self.files) if self.files is not None else int(self.num_samples or 0)


@dataclass(frozen=True, eq=False, repr=False)  # _Value's eq, hash and repr
class Objective(_Value):
    """The metric a sweep optimizes."""

    metric: str
    direction: Literal["minimize", "maximize"] = "minimize"


DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform")
# "optuna": Optuna's samplers ask each trial (shardq.core.optuna_search).
SEARCH_METHODS = ("grid", "random", "optuna")
# Search methods whose sweeps run asynchronously even without ASHA: each recorded result frees a
# slot that the next trial takes (``shardq.core.async_sweep``'s trial sources).
ASYNC_SEARCH_METHODS: tuple[str, ...] = ("optuna",)
# "successive_halving": a rung closes, then promotes; "asha": a trial is promoted as soon as it
# ranks in the top 1/eta of its rung's results so far (``shardq.core.async_sweep``).
EARLY_STOPPING_METHODS = ("successive_halving", "asha")
# ASHA's promotion rule (``shardq.core.asha_rules``): "paper" promotes the top ``n // eta`` of a
# rung's ``n`` results so far; "eager" also promotes the best so far while ``n < eta`` (Optuna's
# ``SuccessiveHalvingPruner``; Ray Tune's ``ASHAScheduler`` lets such a trial continue likewise).
PROMOTION_RULES = ("paper", "eager")


@dataclass(frozen=True, eq=False, repr=False)  # _Value's eq, hash and repr
class Search(_Value):
    """How a sweep's trials are chosen: every grid point / listed trial, a seeded random sample, or
    what an Optuna ``sampler`` asks (``shardq.core.optuna_search``; None for the other methods)."""

    method: str = "grid"
    num_trials: int | None = None
    seed: int = 0
    sampler: str | None = None


@dataclass(frozen=True, eq=False, repr=False)  # _Value's eq, hash and repr
class EarlyStopping(_Value):
    """Successive halving over rungs: every trial trains ``min_budget``; the best 1/``eta`` of each
    rung go on with ``eta`` times the budget, up to ``max_budget``; the rest stop.

    A promoted trial starts from its previous rung's model (``init_model_uri``), and
    ``hyperparameters[budget_param]`` (e.g. epochs) is what the rung adds to it: the rung's
    budget minus the previous rung's, so the trial reaches the rung's total.

    ``method "asha"`` promotes asynchronously over the same rungs and budgets
    (``shardq.core.async_sweep``): no rung waits for its slowest trial. ``promotion`` (ASHA
    only) is its rule: ``"paper"`` or ``"eager"`` (``shardq.core.asha_rules``).
    """

    method: str = "successive_halving"
    eta: int = 3
    min_budget: int = 1
    max_budget: int = 9
    budget_param: str = "epochs"
    promotion: str = "paper"

    @property
    def budgets(self) -> list[int]:
        """Each rung's budget: ``min_budget · eta^k`` up to ``max_budget``."""
        out, budget = [], self.min_budget
        while budget <= self.max_budget:
            out.append(budget)
            budget *= self.eta
        return out

    def survivors(self, entered: int) -> int:
        """How many of ``entered`` trials a rung promotes (at least one)."""
        return max(1, entered // self.eta)


@dataclass(frozen=True, eq=False, repr=False)  # _Value's eq, hash and repr
class Participation(_Value):
    """Which shards train in a round (``data_parallel``): a seeded sample, the same on every retry."""

    fraction: float = 1.0
    min_shards: int = 1
    seed: int = 0


@dataclass(frozen=True, eq=False, repr=False)  # _Value's eq, hash and repr
class Quorum(_Value):
    """When a round closes before every participant reported (``data_parallel``).

    ``fraction``: the round closes once this share of its participants succeeded.
    ``deadline_seconds``: after this long it closes with what it has, if at least
    ``participation.min_shards`` succeeded, else the job fails. Results that arrive after the
    round closed are recorded as late and never counted.
    """

    fraction: float = 1.0
    deadline_seconds: int | None = None


# Server strategies of the reduce step and their parameters' defaults: Flower 1.42's
# (flwr.serverapp.strategy; tests/worker/test_strategies.py reads them from Flower's signatures).
# Flower's names in comments. Its eta_l (the clients' learning rate) is the training function's
# own hyperparameter here (e.g. hyperparameters.lr): the server step never reads it.
STRATEGIES: dict[str, dict[str, float]] = {
    "fedavg": {},
    # FedAvgM: server_learning_rate, server_momentum (0: plain FedAvg with a server rate).
    "fedavgm": {"server_lr": 1.0, "momentum": 0.0},
    # FedAdam / FedYogi: eta, beta_1, beta_2, tau (the legacy flwr.server.strategy.FedAdam has tau 1e-9).
    "fedadam": {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
    "fedyogi": {"server_lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
    # FedProx: proximal_mu, applied by the worker's training function; the reduce is FedAvg.
    "fedprox": {"mu": 0.01},
    # FedBuff (buffered asynchronous FedAvg, shardq.core.fedbuff): its numeric parameters; its
    # "staleness" function is a string (fedbuff_params.STALENESS_FUNCTIONS).
    "fedbuff": dict(FEDBUFF_DEFAULTS),
}
# Strategies whose reduce steps from the round's global model (so round 0 needs model.init_uri).
SERVER_STEP_STRATEGIES = ("fedavgm", "fedadam", "fedyogi")
# Each parameter's allowed range: (low, high, low end open, high end open).
STRATEGY_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "server_lr": (0.0, 1e3, True, False),
    "momentum": (0.0, 1.0, False, True),
    "beta1": (0.0, 1.0, False, True),
    "beta2": (0.0, 1.0, False, True),
    "tau": (0.0, 1.0, True, False),
    "mu": (0.0, 1e3, False, False),
    **FEDBUFF_RANGES,
}


@dataclass(frozen=True, eq=False, repr=False)  # _Value's eq, hash and repr
class Strategy(_Value):
    """The server strategy of a ``data_parallel`` job's reduce step, with every parameter filled in."""

    name: str = "fedavg"
    params: dict[str, Any] = field(default_factory=dict)  # numbers; fedbuff's "staleness" a name

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., **params}``, as requests and tasks carry it."""
        return {"name": self.name, **self.params}


# A task may hold its lease at most SQS's 12-hour visibility ceiling.
MAX_TASK_TIMEOUT_S = 12 * 3600
MAX_ROUND_DEADLINE_S = 7 * 24 * 3600
