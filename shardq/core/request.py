"""TrainingRequest: a training job as a client submits it, read and checked field by field."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from shardq.core import asha_rules, optuna_search
from shardq.core.budgets import budget_field
from shardq.core.evaluation import Evaluation, check_evaluation
from shardq.core.fedbuff_params import NAME as FEDBUFF
from shardq.core.fedbuff_params import parse_params as parse_fedbuff
from shardq.core.fedbuff_params import request_problems as fedbuff_problems
from shardq.core.pipeline_fields import After, after_field
from shardq.core.request_fields import (
    ASYNC_SEARCH_METHODS,
    EARLY_STOPPING_METHODS,
    MAX_ROUND_DEADLINE_S,
    MAX_TASK_TIMEOUT_S,
    SEARCH_METHODS,
    SERVER_STEP_STRATEGIES,
    STRATEGIES,
    STRATEGY_RANGES,
    Dataset,
    EarlyStopping,
    Objective,
    Participation,
    Quorum,
    Search,
    Strategy,
    _dimension_problem,
    count_trials,
    max_round_tasks,
)
from shardq.core.tenancy import tenancy_fields
from shardq.core.validation import (
    DEFAULT_ENTRYPOINT,
    DEFAULT_MAX_PARALLEL,
    DIRECTIONS,
    ENTRYPOINT_RE,
    JOB_ID_RE,
    KINDS,
    MAX_GATHERED_TASKS,
    MAX_NESTING,
    MAX_NUM_SAMPLES,
    MAX_PARALLEL,
    MAX_REQUEST_BYTES,
    MAX_ROUNDS,
    MAX_SHARDS,
    SCHEMA_VERSION,
    Kind,
    ValidationError,
    _Checker,
    _dumps,
    _load_object,
    _nesting,
    _Value,
)


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
    evaluation: Evaluation | None = None
    # Who runs it and how urgently (shardq.core.tenancy); None: the default tenant / priority.
    tenant: str | None = None
    priority: int | None = None
    # USD the job may spend on workers' time (shardq.core.spend); None: no limit.
    budget_usd: float | None = None
    # The job this one follows in a pipeline (``shardq.core.pipeline``).
    after: After | None = None
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
        "evaluation",
        "tenant",
        "priority",
        "budget_usd",
        "after",
    )

    @property
    def asynchronous(self) -> bool:
        """True for a sweep decided result by result (``shardq.core.async_sweep``): ASHA, or a
        search method listed in ``ASYNC_SEARCH_METHODS``."""
        if self.kind != "sweep":
            return False
        if self.early_stopping is not None and self.early_stopping.method == "asha":
            return True
        return self.search is not None and self.search.method in ASYNC_SEARCH_METHODS

    @property
    def task_count(self) -> int:
        """Train tasks per round: shards, or trials for a sweep."""
        if self.kind == "sweep":
            if self.search is not None and self.search.method in ("random", "optuna"):
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
        evaluation = check_evaluation(c, data, kind, MAX_NUM_SAMPLES)
        tenant, priority = tenancy_fields(c, data)
        budget = budget_field(c, data)
        after = after_field(c, data, job_id)
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
            evaluation=evaluation,
            tenant=tenant,
            priority=priority,
            budget_usd=budget,
            after=after,
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
        if not c.choice("kind", kind, KINDS):
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
        c.unknown_keys(raw, ("method", "num_trials", "seed", "sampler"), prefix="search.")
        method = raw.get("method", "grid")
        if not c.choice("search.method", method, SEARCH_METHODS):
            return None
        sampler = None
        if method == "optuna":
            for problem in optuna_search.problems(data, raw):
                c.add(problem)
            sampler = raw.get("sampler", optuna_search.DEFAULT_SAMPLER)
        elif "sampler" in raw:
            c.add('search.sampler applies to method "optuna" only; remove it or set method "optuna"')
        num_trials = c.integer(raw, "num_trials", "search.num_trials", 1, MAX_GATHERED_TASKS)
        if method == "random" and num_trials is None and "num_trials" not in raw:
            c.add('search.num_trials is required for method "random": how many trials to sample')
        if method == "grid" and "num_trials" in raw:
            c.add('search.num_trials applies to method "random" only; remove it')
        seed = c.integer(raw, "seed", "search.seed", 0, 2**63 - 1, default=0) or 0
        return Search(method=method, num_trials=num_trials, seed=seed, sampler=sampler)

    @staticmethod
    def _early_stopping(c: _Checker, data: dict[str, Any]) -> EarlyStopping | None:
        raw = c.obj(data, "early_stopping", "early_stopping")
        if raw is None:
            return None
        c.unknown_keys(
            raw,
            ("method", "eta", "min_budget", "max_budget", "budget_param", "promotion"),
            prefix="early_stopping.",
        )
        method = raw.get("method", "successive_halving")
        c.choice("early_stopping.method", method, EARLY_STOPPING_METHODS)
        for problem in asha_rules.problems(raw, method):  # ASHA's promotion rule (asha_rules)
            c.add(problem)
        eta = c.integer(raw, "eta", "early_stopping.eta", 2, 100, default=3) or 3
        low = c.integer(raw, "min_budget", "early_stopping.min_budget", 1, 10**6, default=1) or 1
        high = c.integer(raw, "max_budget", "early_stopping.max_budget", 1, 10**6, default=9) or 9
        if high < low * eta:
            c.add(
                f"early_stopping.max_budget ({high}) must be at least min_budget × eta ({low * eta}) "
                "for a second rung; raise max_budget or lower eta"
            )
        param = c.string(raw, "budget_param", "early_stopping.budget_param") or "epochs"
        promotion = raw.get("promotion", "paper")
        return EarlyStopping(
            method=method, eta=eta, min_budget=low, max_budget=high, budget_param=param,
            promotion=promotion if isinstance(promotion, str) else "paper",
        )  # fmt: skip

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
        if not c.choice("strategy.name", name, STRATEGIES):
            return None
        if name == FEDBUFF:
            fedbuff_params, problems = parse_fedbuff(raw)
            for problem in problems:
                c.add(problem)
            return Strategy(name=name, params=fedbuff_params)
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
        if self.strategy is not None and self.strategy.name == FEDBUFF and fedbuff_problems(self):
            raise ValidationError("TrainingRequest", fedbuff_problems(self))
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
        random = search is not None and search.method in ("random", "optuna")  # distributions allowed
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
                    f'search.method "{search.method if search else "random"}" needs a search_space object '
                    "of parameters, not a list of trials"
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
        if not c.choice("objective.direction", direction, DIRECTIONS):
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
            if self.early_stopping.promotion == "paper":  # the default: earlier requests keep their hash
                del out["early_stopping"]["promotion"]
        if self.evaluation is not None:
            out["evaluation"] = self.evaluation.to_dict()
        if self.tenant is not None:
            out["tenant"] = self.tenant
        if self.priority is not None:
            out["priority"] = self.priority
        if self.budget_usd is not None:
            out["budget_usd"] = self.budget_usd
        if self.after is not None:
            out["after"] = self.after.to_dict()
        return out

    def to_json(self) -> str:
        """Deterministic JSON for storage and hashing."""
        return _dumps(self.to_dict())
