"""Message contracts: the one definition of every message shardq sends.

TrainingRequest (client → splitter), ShardTask (splitter/aggregator → workers),
ShardResult (workers / DLQ handler → aggregator) and JobView (job record → people).
Each is a frozen dataclass with ``from_dict`` (validating, collecting *every*
problem before raising once) and ``to_dict``/``to_json`` (deterministic, so
content-based deduplication sees identical bodies for identical messages).

Plain dataclasses instead of pydantic keep the Lambdas' cold start small
(see BENCHMARKS.md) and let every error message name the field, the value and
the fix.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

SCHEMA_VERSION = 1

KINDS = ("data_parallel", "sweep", "map")
TASK_TYPES = ("train", "reduce")
RESULT_STATUSES = ("succeeded", "failed")
DIRECTIONS = ("minimize", "maximize")
TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "CANCELLED")
JOB_STATUSES = ("RUNNING", *TERMINAL_STATUSES)

# Tasks per round of a map job. A round of more than advance.CLOSE_RANGE_SHARDS closes in ranges, so
# no item, payload or manifest grows past a service limit up to here (BENCHMARKS.md section 10).
MAX_SHARDS = 1_000_000
# Tasks per round of a job whose round closes in one invocation that gathers every result: a
# data_parallel round (its reduce averages every shard's model) and a sweep (its ranking needs
# every trial). At ≈ 1.5 ms of a 512 MB Lambda per result that is ≈ 15 s against the
# aggregator's 60 s (BENCHMARKS.md section 10); a bigger round wants a hierarchical reduce.
MAX_GATHERED_TASKS = 10_000
MAX_ROUNDS = 1_000
MAX_PARALLEL = 10_000
DEFAULT_MAX_PARALLEL = 64
MAX_NUM_SAMPLES = 10**13
# A request travels in a Lambda payload and lives in one DynamoDB item (400 KB cap).
MAX_REQUEST_BYTES = 256 * 1024
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
ENTRYPOINT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_ENTRYPOINT = "examples.linear:train"
# Free-form objects (model, hyperparameters, search_space) nest at most this deep: deeper JSON
# would overflow the encoder's recursion limit instead of being rejected with a reason.
MAX_NESTING = 32

Kind = Literal["data_parallel", "sweep", "map"]
TaskType = Literal["train", "reduce"]


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


class _Value:
    """Equality, hash and repr for this module's frozen dataclasses, written once for all of them.

    ``@dataclass`` compiles six methods for every frozen class; for this module's eleven that is
    ≈ 6 ms of every Lambda's cold start (BENCHMARKS.md, section 1). With ``eq=False,
    repr=False`` it generates only the three that differ per class (``__init__``,
    ``__setattr__``, ``__delattr__``) and these three stand in for the rest, with the same
    behaviour: equal only to an instance of the same class whose compared fields are equal, a
    hash of the hashed fields, ``Name(field=value, ...)``.
    """

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        names = _field_names(type(self), "compare")
        return tuple(getattr(self, n) for n in names) == tuple(getattr(other, n) for n in names)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in _field_names(type(self), "hash")))

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in _field_names(type(self), "repr"))
        return f"{type(self).__qualname__}({shown})"


_FIELD_NAMES: dict[tuple[type, str], tuple[str, ...]] = {}


def _field_names(cls: type, role: str) -> tuple[str, ...]:
    """The fields of a dataclass that take part in its ``compare``, ``hash`` or ``repr``, in order."""
    names = _FIELD_NAMES.get((cls, role))
    if names is None:
        if role == "hash":  # as dataclasses decides: ``hash`` if given, else ``compare``
            names = tuple(f.name for f in fields(cls) if (f.compare if f.hash is None else f.hash))
        else:
            names = tuple(f.name for f in fields(cls) if getattr(f, role))
        _FIELD_NAMES[(cls, role)] = names
    return names


class ValidationError(ValueError):
    """A message failed validation; ``problems`` lists every problem with its fix."""

    def __init__(self, what: str, problems: list[str]) -> None:
        self.what = what
        self.problems = list(problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid {what} ({count} {noun}):\n{lines}")


class _Checker:
    """Collects problems while a dict is read, so one error can name all of them."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, msg: str) -> None:
        self.problems.append(msg)

    def unknown_keys(self, data: dict[str, Any], allowed: tuple[str, ...], prefix: str = "") -> None:
        for key in data:
            if key not in allowed:
                # Imported here: only a rejected request needs it, and it would cost every Lambda's
                # cold start ≈ 0.5 ms (BENCHMARKS.md, section 1).
                import difflib

                hint = difflib.get_close_matches(str(key), allowed, n=1)
                fix = f"did you mean '{prefix}{hint[0]}'?" if hint else f"allowed: {', '.join(allowed)}"
                self.add(f"unknown field '{prefix}{key}': {fix}")

    def integer(
        self, data: dict[str, Any], key: str, name: str, lo: int, hi: int, default: int | None = None
    ) -> int | None:
        value = data.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                self.add(f"{name} must be an integer between {lo} and {hi}, got {value!r}")
                return None
        if not lo <= value <= hi:
            self.add(f"{name} must be between {lo} and {hi}, got {value}")
            return None
        return value

    def number(
        self,
        data: dict[str, Any],
        key: str,
        name: str,
        lo: float,
        hi: float,
        default: float,
        *,
        lo_open: bool = False,
        hi_open: bool = False,
    ) -> float:
        """A finite number in ``[lo, hi]`` (ends open where asked); ``default`` when absent or bad."""
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.add(f"{name} must be a number, got {value!r:.60}")
            return default
        if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            self.add(f"{name} must be in {left}{lo:g}, {hi:g}{right}, got {value!r}")
            return default
        return float(value)

    def string(self, data: dict[str, Any], key: str, name: str, required: bool = False) -> str | None:
        value = data.get(key)
        if value is None:
            if required:
                self.add(f"{name} is required: give a non-empty string")
            return None
        if not isinstance(value, str) or not value.strip():
            self.add(f"{name} must be a non-empty string, got {value!r}")
            return None
        return value

    def obj(self, data: dict[str, Any], key: str, name: str) -> dict[str, Any] | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.add(f"{name} must be a JSON object, got {type(value).__name__} {value!r:.60}")
            return None
        return value


def _nesting(value: Any) -> int:
    """How deep lists and objects nest in ``value`` (iterative: safe on hostile depths)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth + 1)
            if deepest > MAX_NESTING:
                return deepest
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _dumps(data: dict[str, Any]) -> str:
    # Sorted keys and no whitespace: identical messages hash identically
    # (content-based deduplication) and stay small.
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def _load_object(raw: str | bytes | dict[str, Any], what: str) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        data = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise ValidationError(what, [f"body is not valid JSON ({exc}); send a JSON object"]) from None
    if not isinstance(data, dict):
        raise ValidationError(what, [f"body must be a JSON object, got {type(data).__name__}"])
    return data


def _identity(data: dict[str, Any], fields: tuple[str, ...]) -> _Checker:
    """Check what every task and result carries: version, job id, round, shard, task type."""
    c = _Checker()
    c.unknown_keys(data, fields)
    if data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        c.add(f"schema_version must be {SCHEMA_VERSION}, got {data.get('schema_version')!r}")
    job_id = c.string(data, "job_id", "job_id", required=True)
    if job_id is not None and not JOB_ID_RE.match(job_id):
        c.add(f"job_id is not a shardq job id: {job_id!r}")
    for key, hi in (("round", MAX_ROUNDS), ("shard_id", MAX_SHARDS)):
        if key not in data:
            c.add(f"{key} is required: an integer between 0 and {hi}")
        else:
            c.integer(data, key, key, 0, hi)
    if data.get("task_type") not in TASK_TYPES:
        c.add(f"task_type must be 'train' or 'reduce', got {data.get('task_type')!r}")
    return c


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
SEARCH_METHODS = ("grid", "random")
EARLY_STOPPING_METHODS = ("successive_halving",)


@dataclass(frozen=True, eq=False, repr=False)  # _Value's eq, hash and repr
class Search(_Value):
    """How a sweep's trials are chosen: every grid point / listed trial, or a seeded random sample."""

    method: str = "grid"
    num_trials: int | None = None
    seed: int = 0


@dataclass(frozen=True, eq=False, repr=False)  # _Value's eq, hash and repr
class EarlyStopping(_Value):
    """Successive halving over rungs: every trial trains ``min_budget``; the best 1/``eta`` of each
    rung go on with ``eta`` times the budget, up to ``max_budget``; the rest stop.

    A promoted trial starts from its previous rung's model (``init_model_uri``), and
    ``hyperparameters[budget_param]`` (e.g. epochs) is what the rung adds to it: the rung's
    budget minus the previous rung's, so the trial reaches the rung's total.
    """

    method: str = "successive_halving"
    eta: int = 3
    min_budget: int = 1
    max_budget: int = 9
    budget_param: str = "epochs"

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


# Server strategies of the reduce step and their parameters' defaults (Flower's names in comments).
STRATEGIES: dict[str, dict[str, float]] = {
    "fedavg": {},
    # FedAvgM: server_learning_rate, server_momentum.
    "fedavgm": {"server_lr": 1.0, "momentum": 0.9},
    # FedAdam / FedYogi: eta, beta_1, beta_2, tau.
    "fedadam": {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-9},
    "fedyogi": {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-9},
    # FedProx: proximal_mu, applied by the worker's training function; the reduce is FedAvg.
    "fedprox": {"mu": 0.01},
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
}


@dataclass(frozen=True, eq=False, repr=False)  # _Value's eq, hash and repr
class Strategy(_Value):
    """The server strategy of a ``data_parallel`` job's reduce step, with every parameter filled in."""

    name: str = "fedavg"
    params: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., **params}``, as requests and tasks carry it."""
        return {"name": self.name, **self.params}


# A task may hold its lease at most SQS's 12-hour visibility ceiling.
MAX_TASK_TIMEOUT_S = 12 * 3600
MAX_ROUND_DEADLINE_S = 7 * 24 * 3600


@dataclass(frozen=True, eq=False, repr=False)  # _Value's eq, hash and repr
class TrainingRequest(_Value):
    """A training job as a client submits it (schema: schemas/training-request.schema.json)."""

    kind: Kind
    dataset: Dataset
    entrypoint: str = DEFAULT_ENTRYPOINT
    job_id: str | None = None
    shard_count: int | None = None
    shard_size: int | None = None
    rounds: int = 1
    model: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    search_space: dict[str, Any] | list[dict[str, Any]] | None = None
    objective: Objective | None = None
    max_parallel: int = DEFAULT_MAX_PARALLEL
    max_failed_shards: int = 0
    participation: Participation | None = None
    quorum: Quorum | None = None
    strategy: Strategy | None = None
    task_timeout_seconds: int | None = None
    search: Search | None = None
    early_stopping: EarlyStopping | None = None
    schema_version: int = SCHEMA_VERSION

    FIELDS = (
        "schema_version",
        "job_id",
        "kind",
        "dataset",
        "sharding",
        "rounds",
        "model",
        "hyperparameters",
        "search_space",
        "objective",
        "max_parallel",
        "max_failed_shards",
        "entrypoint",
        "participation",
        "quorum",
        "strategy",
        "task_timeout_seconds",
        "search",
        "early_stopping",
    )

    @property
    def task_count(self) -> int:
        """Train tasks per round: shards, or trials for a sweep."""
        if self.kind == "sweep":
            if self.search is not None and self.search.method == "random":
                return self.search.num_trials or 0
            return count_trials(self.search_space)
        if self.shard_count is not None:
            return self.shard_count
        size = self.dataset.size
        step = self.shard_size or size
        return -(-size // step)

    @property
    def round_count(self) -> int:
        """Rounds the job runs: ``rounds``, or a successive-halving sweep's rungs."""
        if self.early_stopping is not None:
            return len(self.early_stopping.budgets)
        return self.rounds

    @classmethod
    def from_json(cls, raw: str | bytes | dict[str, Any]) -> TrainingRequest:
        """Parse and validate a request; raises ValidationError naming every problem."""
        return cls.from_dict(_load_object(raw, "TrainingRequest"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingRequest:
        """Validate ``data`` against the TrainingRequest contract; one error names every problem."""
        if not isinstance(data, dict):
            raise ValidationError("TrainingRequest", ["request must be a JSON object"])
        c = _Checker()
        c.unknown_keys(data, cls.FIELDS)
        job_id, kind = cls._identity(c, data)
        dataset = cls._dataset(c, data)
        shard_count, shard_size = cls._sharding(c, data, kind, dataset)
        rounds, model, hyperparameters = cls._training(c, data, kind)
        search_space, objective, search, early_stopping = cls._sweep(c, data, kind)
        max_parallel, max_failed, entrypoint = cls._execution(c, data)
        participation, quorum, strategy = cls._rounds_policy(c, data, kind, shard_count)
        timeout = c.integer(data, "task_timeout_seconds", "task_timeout_seconds", 1, MAX_TASK_TIMEOUT_S)
        for name in ("model", "hyperparameters", "search_space"):
            if _nesting(data.get(name)) > MAX_NESTING:
                c.add(f"{name} nests more than {MAX_NESTING} levels deep; flatten it or pass a URI to it")
        if c.problems:
            raise ValidationError("TrainingRequest", c.problems)
        request = cls(
            kind=kind,  # type: ignore[arg-type]
            dataset=dataset,  # type: ignore[arg-type]
            entrypoint=entrypoint,
            job_id=job_id,
            shard_count=shard_count,
            shard_size=shard_size,
            rounds=rounds,
            model=model,
            hyperparameters=hyperparameters,
            search_space=search_space,
            objective=objective,
            max_parallel=max_parallel,
            max_failed_shards=max_failed,
            participation=participation,
            quorum=quorum,
            strategy=strategy,
            task_timeout_seconds=timeout,
            search=search,
            early_stopping=early_stopping,
        )
        request._check_totals()
        return request

    @staticmethod
    def _identity(c: _Checker, data: dict[str, Any]) -> tuple[str | None, str | None]:
        """``schema_version``, ``job_id`` and ``kind``."""
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            c.add(
                f"schema_version must be {SCHEMA_VERSION}, got {version!r}; upgrade the client or the stack"
            )
        job_id = data.get("job_id")
        if job_id is not None and (not isinstance(job_id, str) or not JOB_ID_RE.match(job_id)):
            c.add(
                f"job_id must be 1-64 letters, digits, '-' or '_' starting with a letter or digit, "
                f"got {job_id!r}; omit it to get a generated id"
            )
            job_id = None
        kind = data.get("kind")
        if kind not in KINDS:
            c.add(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
            kind = None
        return job_id, kind

    @staticmethod
    def _training(
        c: _Checker, data: dict[str, Any], kind: str | None
    ) -> tuple[int, dict[str, Any], dict[str, Any]]:
        """``rounds``, ``model`` and ``hyperparameters``."""
        rounds = c.integer(data, "rounds", "rounds", 1, MAX_ROUNDS, default=1) or 1
        if kind in ("sweep", "map") and rounds != 1:
            c.add(f"rounds applies to kind 'data_parallel' only, got rounds={rounds} for kind '{kind}'")
        model = c.obj(data, "model", "model") or {}
        init_uri = model.get("init_uri")
        if init_uri is not None and (not isinstance(init_uri, str) or "://" not in init_uri):
            c.add(f"model.init_uri must be a URI such as s3://bucket/key, got {init_uri!r}")
        hyperparameters = c.obj(data, "hyperparameters", "hyperparameters") or {}
        return rounds, model, hyperparameters

    @classmethod
    def _sweep(
        cls, c: _Checker, data: dict[str, Any], kind: str | None
    ) -> tuple[
        dict[str, Any] | list[dict[str, Any]] | None, Objective | None, Search | None, EarlyStopping | None
    ]:
        """``search_space``, ``objective``, ``search`` and ``early_stopping``: for sweeps only."""
        if kind != "sweep":
            for key in ("search_space", "objective", "search", "early_stopping"):
                if data.get(key) is not None:
                    fix = " or set kind 'sweep'" if key == "search_space" else ""
                    c.add(f"{key} applies to kind 'sweep' only; remove it{fix} (got kind {kind!r})")
            return None, None, None, None
        search = cls._search(c, data)
        space = cls._search_space(c, data.get("search_space"), search)
        objective = cls._objective(c, data.get("objective"))
        return space, objective, search, cls._early_stopping(c, data)

    @staticmethod
    def _search(c: _Checker, data: dict[str, Any]) -> Search | None:
        raw = c.obj(data, "search", "search")
        if raw is None:
            return None
        c.unknown_keys(raw, ("method", "num_trials", "seed"), prefix="search.")
        method = raw.get("method", "grid")
        if method not in SEARCH_METHODS:
            c.add(f"search.method must be one of {', '.join(SEARCH_METHODS)}, got {method!r}")
            return None
        num_trials = c.integer(raw, "num_trials", "search.num_trials", 1, MAX_GATHERED_TASKS)
        if method == "random" and num_trials is None and "num_trials" not in raw:
            c.add('search.num_trials is required for method "random": how many trials to sample')
        if method == "grid" and "num_trials" in raw:
            c.add('search.num_trials applies to method "random" only; remove it')
        seed = c.integer(raw, "seed", "search.seed", 0, 2**63 - 1, default=0) or 0
        return Search(method=method, num_trials=num_trials, seed=seed)

    @staticmethod
    def _early_stopping(c: _Checker, data: dict[str, Any]) -> EarlyStopping | None:
        raw = c.obj(data, "early_stopping", "early_stopping")
        if raw is None:
            return None
        c.unknown_keys(
            raw, ("method", "eta", "min_budget", "max_budget", "budget_param"), prefix="early_stopping."
        )
        method = raw.get("method", "successive_halving")
        if method not in EARLY_STOPPING_METHODS:
            c.add(f"early_stopping.method must be one of {', '.join(EARLY_STOPPING_METHODS)}, got {method!r}")
        eta = c.integer(raw, "eta", "early_stopping.eta", 2, 100, default=3) or 3
        low = c.integer(raw, "min_budget", "early_stopping.min_budget", 1, 10**6, default=1) or 1
        high = c.integer(raw, "max_budget", "early_stopping.max_budget", 1, 10**6, default=9) or 9
        if high < low * eta:
            c.add(
                f"early_stopping.max_budget ({high}) must be at least min_budget × eta ({low * eta}) "
                "for a second rung; raise max_budget or lower eta"
            )
        param = c.string(raw, "budget_param", "early_stopping.budget_param") or "epochs"
        return EarlyStopping(method=method, eta=eta, min_budget=low, max_budget=high, budget_param=param)

    @staticmethod
    def _execution(c: _Checker, data: dict[str, Any]) -> tuple[int, int, str]:
        """``max_parallel``, ``max_failed_shards`` and ``entrypoint``."""
        max_parallel = c.integer(
            data, "max_parallel", "max_parallel", 1, MAX_PARALLEL, default=DEFAULT_MAX_PARALLEL
        )
        max_failed = c.integer(data, "max_failed_shards", "max_failed_shards", 0, MAX_SHARDS, default=0)
        entrypoint = data.get("entrypoint", DEFAULT_ENTRYPOINT)
        if not isinstance(entrypoint, str) or not ENTRYPOINT_RE.match(entrypoint):
            c.add(f"entrypoint must look like 'package.module:function', got {entrypoint!r}")
        return max_parallel or DEFAULT_MAX_PARALLEL, max_failed or 0, entrypoint

    @classmethod
    def _rounds_policy(
        cls, c: _Checker, data: dict[str, Any], kind: str | None, shard_count: int | None
    ) -> tuple[Participation | None, Quorum | None, Strategy | None]:
        """``participation``, ``quorum`` and ``strategy``: how a ``data_parallel`` round runs."""
        given = [k for k in ("participation", "quorum", "strategy") if data.get(k) is not None]
        if kind != "data_parallel":
            for key in given:
                c.add(f"{key} applies to kind 'data_parallel' only; remove it (got kind {kind!r})")
            return None, None, None
        participation = quorum = strategy = None
        raw = c.obj(data, "participation", "participation")
        if raw is not None:
            c.unknown_keys(raw, ("fraction", "min_shards", "seed"), prefix="participation.")
            fraction = c.number(raw, "fraction", "participation.fraction", 0, 1, 1.0, lo_open=True)
            most = shard_count or MAX_SHARDS
            min_shards = c.integer(raw, "min_shards", "participation.min_shards", 1, most, default=1) or 1
            seed = c.integer(raw, "seed", "participation.seed", 0, 2**63 - 1, default=0) or 0
            participation = Participation(fraction=fraction, min_shards=min_shards, seed=seed)
        raw = c.obj(data, "quorum", "quorum")
        if raw is not None:
            c.unknown_keys(raw, ("fraction", "deadline_seconds"), prefix="quorum.")
            fraction = c.number(raw, "fraction", "quorum.fraction", 0, 1, 1.0, lo_open=True)
            deadline = c.integer(raw, "deadline_seconds", "quorum.deadline_seconds", 1, MAX_ROUND_DEADLINE_S)
            quorum = Quorum(fraction=fraction, deadline_seconds=deadline)
        raw = c.obj(data, "strategy", "strategy")
        if raw is not None:
            strategy = cls._strategy(c, raw)
        return participation, quorum, strategy

    @staticmethod
    def _strategy(c: _Checker, raw: dict[str, Any]) -> Strategy | None:
        name = raw.get("name", "fedavg")
        if name not in STRATEGIES:
            c.add(f"strategy.name must be one of {', '.join(STRATEGIES)}, got {name!r}")
            return None
        defaults = STRATEGIES[name]
        c.unknown_keys(raw, ("name", *defaults), prefix="strategy.")
        params = {}
        for key, default in defaults.items():
            lo, hi, lo_open, hi_open = STRATEGY_RANGES[key]
            params[key] = c.number(
                raw, key, f"strategy.{key}", lo, hi, default, lo_open=lo_open, hi_open=hi_open
            )
        return Strategy(name=name, params=params)

    def _check_totals(self) -> None:
        """What only the whole request tells: the failure budget against the tasks, and its size."""
        tasks = self.task_count
        if self.max_failed_shards > tasks:
            raise ValidationError(
                "TrainingRequest",
                [
                    f"max_failed_shards must be at most the number of tasks ({tasks}), "
                    f"got {self.max_failed_shards}"
                ],
            )
        if (
            self.strategy is not None
            and self.strategy.name in SERVER_STEP_STRATEGIES
            and not self.model.get("init_uri")
        ):
            raise ValidationError(
                "TrainingRequest",
                [
                    f"strategy.name {self.strategy.name!r} steps the server model from the round's global "
                    "model, so round 0 needs one: give model.init_uri (Flower's initial_parameters), or "
                    "use strategy fedavg or fedprox"
                ],
            )
        if self.participation is not None and self.participation.min_shards > tasks:
            raise ValidationError(
                "TrainingRequest",
                [
                    f"participation.min_shards must be at most the number of shards ({tasks}), "
                    f"got {self.participation.min_shards}"
                ],
            )
        size = len(self.to_json().encode())
        if size > MAX_REQUEST_BYTES:
            raise ValidationError(
                "TrainingRequest",
                [
                    f"request is {size} bytes, over the {MAX_REQUEST_BYTES} byte limit; put long file "
                    "lists or search spaces in S3 and pass dataset.uri instead"
                ],
            )

    @staticmethod
    def _dataset(c: _Checker, data: dict[str, Any]) -> Dataset | None:
        raw = data.get("dataset")
        if raw is None:
            c.add('dataset is required: give {"uri": ..., "num_samples": N} or {"files": [...]}')
            return None
        if not isinstance(raw, dict):
            c.add(f"dataset must be a JSON object, got {raw!r:.60}")
            return None
        c.unknown_keys(raw, ("uri", "num_samples", "files"), prefix="dataset.")
        uri = c.string(raw, "uri", "dataset.uri")
        num_samples = c.integer(raw, "num_samples", "dataset.num_samples", 1, MAX_NUM_SAMPLES)
        files = raw.get("files")
        if files is not None:
            if not isinstance(files, list) or not files:
                c.add(f"dataset.files must be a non-empty list of URIs or paths, got {files!r:.60}")
                files = None
            else:
                bad = [i for i, f in enumerate(files) if not isinstance(f, str) or not f]
                if bad:
                    c.add(f"dataset.files[{bad[0]}] must be a non-empty string, got {files[bad[0]]!r}")
                    files = None
        if raw.get("num_samples") is not None and raw.get("files") is not None:
            c.add("dataset takes either num_samples or files, not both; remove one")
        elif raw.get("num_samples") is None and raw.get("files") is None:
            c.add("dataset needs num_samples (with uri) or files: give one")
        return Dataset(uri=uri, num_samples=num_samples, files=tuple(files) if files else None)

    @staticmethod
    def _sharding(
        c: _Checker, data: dict[str, Any], kind: str | None, dataset: Dataset | None
    ) -> tuple[int | None, int | None]:
        raw = data.get("sharding")
        if kind == "sweep":
            if raw is not None:
                c.add("sharding does not apply to kind 'sweep' (one task per trial); remove it")
            return None, None
        if raw is None:
            c.add('sharding is required: give {"shard_count": N} or {"shard_size": N}')
            return None, None
        if not isinstance(raw, dict):
            c.add(f"sharding must be a JSON object, got {raw!r:.60}")
            return None, None
        c.unknown_keys(raw, ("shard_count", "shard_size"), prefix="sharding.")
        most = max_round_tasks(kind) if kind in KINDS else MAX_SHARDS
        count = c.integer(raw, "shard_count", "sharding.shard_count", 1, MAX_SHARDS)
        if count is not None and count > most:
            c.add(
                f"sharding.shard_count {count} is over {most:,} for kind {kind!r}: one reduce averages every "
                f"shard's model each round; give at most {most:,} (larger) shards, or use kind 'map'"
            )
        size = c.integer(raw, "shard_size", "sharding.shard_size", 1, MAX_NUM_SAMPLES)
        if "shard_count" in raw and "shard_size" in raw:
            c.add("sharding takes either shard_count or shard_size, not both; remove one")
            return None, None
        if "shard_count" not in raw and "shard_size" not in raw:
            c.add("sharding needs shard_count or shard_size: give one")
            return None, None
        items = dataset.size if dataset else 0
        unit = "files" if dataset and dataset.files is not None else "num_samples"
        if count is not None and items and count > items:
            c.add(
                f"sharding.shard_count ({count}) exceeds dataset.{unit} ({items}): every shard needs "
                f"at least one item; lower shard_count to {items} or less"
            )
        if size is not None and items:
            derived = -(-items // size)
            if derived > most:
                c.add(
                    f"sharding.shard_size {size} gives {derived} shards, over {most:,} for kind {kind!r}; "
                    f"raise shard_size to at least {-(-items // most)}"
                )
        return count, size

    @staticmethod
    def _search_space(
        c: _Checker, raw: Any, search: Search | None
    ) -> dict[str, Any] | list[dict[str, Any]] | None:
        if raw is None:
            c.add(
                "search_space is required for kind 'sweep': a grid {\"lr\": [0.1, 0.01]} "
                'or a list of trials [{"lr": 0.1}, ...]'
            )
            return None
        random = search is not None and search.method == "random"
        if isinstance(raw, dict):
            if not raw:
                c.add("search_space grid is empty: give at least one parameter with a list of values")
                return None
            problems = [p for name, value in raw.items() if (p := _dimension_problem(name, value, random))]
            for problem in problems:
                c.add(problem)
            if problems:
                return None
        elif isinstance(raw, list):
            if random:
                c.add(
                    'search.method "random" needs a search_space object of parameters, not a list of trials'
                )
                return None
            if not raw:
                c.add("search_space list is empty: give at least one trial object")
                return None
            bad_i = [i for i, t in enumerate(raw) if not isinstance(t, dict)]
            if bad_i:
                c.add(f"search_space[{bad_i[0]}] must be a JSON object of hyperparameters")
                return None
        else:
            c.add(f"search_space must be a grid object or a list of trial objects, got {raw!r:.60}")
            return None
        trials = search.num_trials or 0 if random and search is not None else count_trials(raw)
        if trials > MAX_GATHERED_TASKS:
            c.add(f"search_space expands to {trials} trials, over {MAX_GATHERED_TASKS:,}; shrink the grid")
            return None
        return raw

    @staticmethod
    def _objective(c: _Checker, raw: Any) -> Objective | None:
        if raw is None:
            c.add('objective is required for kind \'sweep\': {"metric": "val_loss", "direction": "minimize"}')
            return None
        if not isinstance(raw, dict):
            c.add(f"objective must be a JSON object, got {raw!r:.60}")
            return None
        c.unknown_keys(raw, ("metric", "direction"), prefix="objective.")
        metric = c.string(raw, "metric", "objective.metric", required=True)
        direction = raw.get("direction", "minimize")
        if direction not in DIRECTIONS:
            c.add(f"objective.direction must be 'minimize' or 'maximize', got {direction!r}")
            return None
        return Objective(metric=metric, direction=direction) if metric else None

    def to_dict(self) -> dict[str, Any]:
        """The request as JSON-ready data, in the submitted shape."""
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "kind": self.kind,
            "dataset": {k: v for k, v in asdict(self.dataset).items() if v is not None},
            "rounds": self.rounds,
            "model": self.model,
            "hyperparameters": self.hyperparameters,
            "max_parallel": self.max_parallel,
            "max_failed_shards": self.max_failed_shards,
            "entrypoint": self.entrypoint,
        }
        if self.dataset.files is not None:
            out["dataset"]["files"] = list(self.dataset.files)
        if self.job_id is not None:
            out["job_id"] = self.job_id
        if self.shard_count is not None:
            out["sharding"] = {"shard_count": self.shard_count}
        elif self.shard_size is not None:
            out["sharding"] = {"shard_size": self.shard_size}
        if self.search_space is not None:
            out["search_space"] = self.search_space
        if self.objective is not None:
            out["objective"] = {"metric": self.objective.metric, "direction": self.objective.direction}
        # The round policy appears only when given, so earlier requests keep their hash.
        if self.participation is not None:
            out["participation"] = asdict(self.participation)
        if self.quorum is not None:
            out["quorum"] = {k: v for k, v in asdict(self.quorum).items() if v is not None}
        if self.strategy is not None:
            out["strategy"] = self.strategy.to_dict()
        if self.task_timeout_seconds is not None:
            out["task_timeout_seconds"] = self.task_timeout_seconds
        if self.search is not None:
            out["search"] = {k: v for k, v in asdict(self.search).items() if v is not None}
        if self.early_stopping is not None:
            out["early_stopping"] = asdict(self.early_stopping)
        return out

    def to_json(self) -> str:
        """Deterministic JSON for storage and hashing."""
        return _dumps(self.to_dict())


class _Message(_Value):
    """What tasks and results share: their identity and their deterministic JSON body."""

    job_id: str
    round: int
    shard_id: int
    task_type: TaskType

    @property
    def key(self) -> str:
        """``job:round:shard:type``: the deduplication id of a task, what the aggregator counts once."""
        return f"{self.job_id}:{self.round}:{self.shard_id}:{self.task_type}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        """Deterministic JSON body (sorted keys: content-based deduplication hashes it)."""
        return _dumps(self.to_dict())


@dataclass(frozen=True, eq=False, repr=False)  # _Value's eq, hash and repr
class ShardTask(_Message):
    """One unit of work on the task queue: train a shard/trial, or reduce a round's models."""

    job_id: str
    round: int
    shard_id: int
    shard_count: int
    task_type: TaskType
    kind: Kind
    entrypoint: str
    data: dict[str, Any]
    hyperparameters: dict[str, Any]
    output_prefix: str
    init_model_uri: str | None = None
    inputs_uri: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    # Set on a claim-check envelope: the full task body is this S3 object (shardq.core.enqueue).
    payload_uri: str | None = None
    # The worker stops the task after this long and reports it failed (request.task_timeout_seconds).
    timeout_s: int | None = None
    # The job's server strategy (``Strategy.to_dict()``): the reduce applies it; FedProx's ``mu``
    # is for the training function. Empty for FedAvg.
    strategy: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_json(cls, raw: str | bytes | dict[str, Any]) -> ShardTask:
        """Parse a task body; raises ValidationError naming every problem."""
        data = _load_object(raw, "ShardTask")
        c = _identity(data, tuple(cls.__dataclass_fields__))
        c.integer(data, "shard_count", "shard_count", 1, MAX_SHARDS)
        if data.get("kind") not in KINDS:
            c.add(f"kind must be one of {', '.join(KINDS)}, got {data.get('kind')!r}")
        for key in ("shard_count", "entrypoint", "data", "output_prefix"):
            if key not in data:
                c.add(f"{key} is required")
        if c.problems:
            raise ValidationError("ShardTask", c.problems)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True, eq=False, repr=False)  # _Value's eq, hash and repr
class ShardResult(_Message):
    """A worker's report on one task (or the DLQ handler's, when the task died)."""

    job_id: str
    round: int
    shard_id: int
    task_type: TaskType
    status: Literal["succeeded", "failed"]
    metrics: dict[str, float] = field(default_factory=dict)
    num_samples: int = 0
    artifact_uri: str | None = None
    duration_s: float = 0.0
    worker_id: str | None = None
    attempt: int = 1
    error: str | None = None
    schema_version: int = SCHEMA_VERSION
    # The model file alone (``artifact_uri`` may be the prefix of several outputs). Added after
    # schema 1 shipped: optional, so results without it still parse; readers fall back to
    # ``artifact_uri`` (see ``model``).
    model_uri: str | None = None

    @property
    def model(self) -> str | None:
        """The shard's model file: ``model_uri``, or ``artifact_uri`` in results that predate it."""
        return self.model_uri or self.artifact_uri

    @classmethod
    def for_task(cls, task: ShardTask, status: Literal["succeeded", "failed"], **fields: Any) -> ShardResult:
        """The result of ``task``: its identity, ``status`` and the given fields."""
        return cls(
            job_id=task.job_id,
            round=task.round,
            shard_id=task.shard_id,
            task_type=task.task_type,
            status=status,
            **fields,
        )

    @classmethod
    def from_json(cls, raw: str | bytes | dict[str, Any]) -> ShardResult:
        """Parse and validate a result; raises ValidationError naming every problem."""
        data = _load_object(raw, "ShardResult")
        c = _identity(data, tuple(cls.__dataclass_fields__))
        if data.get("status") not in RESULT_STATUSES:
            c.add(f"status must be 'succeeded' or 'failed', got {data.get('status')!r}")
        metrics = data.get("metrics", {})
        if not isinstance(metrics, dict):
            c.add(f"metrics must be an object of name → number, got {metrics!r:.60}")
        else:
            for name, value in metrics.items():
                if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                    c.add(f"metrics.{name} must be a finite number, got {value!r}")
        c.integer(data, "num_samples", "num_samples", 0, MAX_NUM_SAMPLES)
        duration = data.get("duration_s", 0.0)
        if isinstance(duration, bool) or not isinstance(duration, int | float) or duration < 0:
            c.add(f"duration_s must be a number >= 0, got {duration!r}")
        c.integer(data, "attempt", "attempt", 1, 10_000)
        model_uri = data.get("model_uri")
        if model_uri is not None and not (isinstance(model_uri, str) and model_uri.startswith("s3://")):
            c.add(f"model_uri must be an s3:// URI of the model file, got {model_uri!r:.80}")
        if (
            data.get("status") == "succeeded"
            and data.get("task_type") == "reduce"
            and not data.get("artifact_uri")
        ):
            c.add("artifact_uri is required for a succeeded reduce result: the next round starts from it")
        if c.problems:
            raise ValidationError("ShardResult", c.problems)
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        values["metrics"] = {k: float(v) for k, v in metrics.items()}
        return cls(**values)


@dataclass(frozen=True, eq=False, repr=False)  # _Value's eq, hash and repr
class JobView(_Value):
    """What a person or script sees of a job (``shardq status``, the splitter's answer)."""

    job_id: str
    status: str
    kind: str
    round: int
    rounds: int
    phase: str
    shard_count: int
    done: int
    failed: int
    created_at: str
    finished_at: str | None = None
    result_uri: str | None = None
    error: str | None = None
    # Set while an operator's cancel is under way (a big map round closing in ranges).
    cancel_requested_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return asdict(self)
