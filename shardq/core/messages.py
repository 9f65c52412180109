"""ShardTask, ShardResult and JobView: the messages after the request, and their metric values."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from shardq.core.validation import (
    KINDS,
    MAX_NUM_SAMPLES,
    MAX_SHARDS,
    RESULT_STATUSES,
    SCHEMA_VERSION,
    Kind,
    TaskType,
    ValidationError,
    _dumps,
    _identity,
    _load_object,
    _Value,
)

# Earlier attempts a result carries at most (a task interrupted more often keeps the latest).
MAX_ATTEMPT_HISTORY = 20
# The highest worker price a result may carry (USD per hour): a p5.48xlarge is ≈ 55-100.
MAX_PRICE_PER_HOUR = 10_000


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
    # A reduce task's evaluation dataset (request.evaluation, ``shardq.core.evaluation``). Left out
    # of the body when None, so a worker older than the field still reads every other task.
    eval_dataset: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION
    # The retry generation that sent this task (``shardq retry`` bumps it): its checkpoints live
    # under their own key, so a retried shard never resumes from the failed attempt's state.
    # Left out of the body at 0, like ``eval_dataset``.
    generation: int = 0
    # How often a worker handed this task back gracefully (SIGTERM, a Spot notice) by re-sending it
    # (``shardq.worker.release``): such a release costs no receive toward the DLQ. Left out at 0.
    releases: int = 0
    # 1 for an asynchronous sweep's backup copy of a straggling task (``shardq.core.async_backup``):
    # its own deduplication id, output prefix and checkpoints. Left out at 0.
    backup: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (without ``eval_dataset`` when the task has none, nor ``generation``,
        ``releases`` or ``backup`` at 0)."""
        out = asdict(self)
        if out["eval_dataset"] is None:
            del out["eval_dataset"]
        for counter in ("generation", "releases", "backup"):
            if not out[counter]:
                del out[counter]
        return out

    @classmethod
    def from_json(cls, raw: str | bytes | dict[str, Any]) -> ShardTask:
        """Parse a task body; raises ValidationError naming every problem."""
        data = _load_object(raw, "ShardTask")
        c = _identity(data, tuple(cls.__dataclass_fields__))
        c.integer(data, "shard_count", "shard_count", 1, MAX_SHARDS)
        for counter in ("generation", "releases"):
            if counter in data:
                c.integer(data, counter, counter, 0, 1_000_000)
        if "backup" in data:
            c.integer(data, "backup", "backup", 0, 1)
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
    status: Literal["succeeded", "failed", "diverged"]
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
    # The training code's version (``shardq.worker.code.fingerprint``): ``dist==version`` or
    # ``sha256:<16 hex>`` of the entrypoint module's file. Optional, added after schema 1 shipped.
    code_version: str | None = None
    # Where this attempt started: the step of the checkpoint it resumed from (None: from scratch),
    # and the task's earlier attempts as its checkpoints recorded them (``shardq.worker.checkpoints``:
    # ``{"attempt", "worker_id", "resume_step", "last_step"}``). Optional; left out of the body when
    # unset.
    resume_step: int | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    # The retry generation of the task this result answers (``ShardTask.generation``): a failure
    # of an older generation than the shard's retry is stale, kept apart and never counted
    # (``shardq.core.store.counting``). Optional; left out of the body at 0, like the task's.
    generation: int = 0
    # What the worker's time costs, in USD per hour (``shardq worker --price-per-hour``, or its
    # instance type's price from ``shardq/core/instance_prices.json``); 0: unpriced (a laptop).
    # The aggregator counts ``cost_micro_usd`` once, with the outcome (``shardq.core.spend``).
    # Optional; left out of the body at 0.
    price_per_hour: float = 0.0
    # The hyperparameters a sampler asked for this trial on the worker (an Optuna sweep's trial:
    # ``shardq.worker.optuna_sampler``), so every reader sees them. Optional; left out when None.
    params: dict[str, Any] | None = None
    # Seconds the worker was busy with this task: from receiving it to sending this result (its
    # checks, the run, the upload), on the worker's own monotonic clock. The aggregator sizes the
    # job's window from it (``shardq.core.depth``): unlike the gaps between results, it leaves out
    # the time a starved worker waited for work. Optional; left out when None (older workers).
    busy_s: float | None = None
    # The copy of the task this result answers (``ShardTask.backup``: 1 for a sweep's backup copy),
    # so the sweep knows which copy's lane is still busy. Optional; left out at 0.
    backup: int = 0

    @property
    def cost_micro_usd(self) -> int:
        """What this task's measured seconds cost at its worker's price, in millionths of a USD
        (integers: a job's cost is an exact sum of its results' costs)."""
        return round(self.duration_s * self.price_per_hour * 1_000_000 / 3600)

    @property
    def model(self) -> str | None:
        """The shard's model file: ``model_uri``, or ``artifact_uri`` in results that predate it."""
        return self.model_uri or self.artifact_uri

    @classmethod
    def for_task(
        cls, task: ShardTask, status: Literal["succeeded", "failed", "diverged"], **fields: Any
    ) -> ShardResult:
        """The result of ``task``: its identity, its retry generation, ``status`` and the given fields."""
        return cls(
            job_id=task.job_id,
            round=task.round,
            shard_id=task.shard_id,
            task_type=task.task_type,
            status=status,
            **{"generation": task.generation, "backup": task.backup, **fields},
        )

    @classmethod
    def from_json(cls, raw: str | bytes | dict[str, Any]) -> ShardResult:
        """Parse and validate a result; raises ValidationError naming every problem."""
        data = _load_object(raw, "ShardResult")
        c = _identity(data, tuple(cls.__dataclass_fields__))
        if data.get("status") not in RESULT_STATUSES:
            c.add(f"status must be 'succeeded', 'failed' or 'diverged', got {data.get('status')!r}")
        metrics = data.get("metrics", {})
        values_of: dict[str, float] = {}
        if not isinstance(metrics, dict):
            c.add(f"metrics must be an object of name → number, got {metrics!r:.60}")
        else:
            for name, value in metrics.items():
                number = metric_value(value)
                if number is None:
                    c.add(
                        f"metrics.{name} must be a number (non-finite as NaN, Infinity or the strings "
                        f'"nan", "inf", "-inf"), got {value!r:.60}'
                    )
                else:
                    values_of[name] = number
        c.integer(data, "num_samples", "num_samples", 0, MAX_NUM_SAMPLES)
        duration = data.get("duration_s", 0.0)
        if (
            isinstance(duration, bool)
            or not isinstance(duration, int | float)
            or not math.isfinite(duration)
            or duration < 0
        ):
            c.add(f"duration_s must be a finite number >= 0, got {duration!r}")
        c.integer(data, "attempt", "attempt", 1, 10_000)
        model_uri = data.get("model_uri")
        if model_uri is not None and not (isinstance(model_uri, str) and model_uri.startswith("s3://")):
            c.add(f"model_uri must be an s3:// URI of the model file, got {model_uri!r:.80}")
        code_version = data.get("code_version")
        if code_version is not None and not (isinstance(code_version, str) and 0 < len(code_version) <= 200):
            c.add(f"code_version must be a string of 1-200 characters or null, got {code_version!r:.80}")
        if data.get("resume_step") is not None:
            c.integer(data, "resume_step", "resume_step", 0, 10**15)
        if "generation" in data:
            c.integer(data, "generation", "generation", 0, 1_000_000)
        if "backup" in data:
            c.integer(data, "backup", "backup", 0, 1)
        price = data.get("price_per_hour", 0.0)
        if (
            isinstance(price, bool)
            or not isinstance(price, int | float)
            or not math.isfinite(price)
            or not 0 <= price <= MAX_PRICE_PER_HOUR
        ):
            c.add(f"price_per_hour must be a number of USD from 0 to {MAX_PRICE_PER_HOUR}, got {price!r:.40}")
        busy = data.get("busy_s")
        if busy is not None and (
            isinstance(busy, bool) or not isinstance(busy, int | float) or not 0 <= busy < math.inf
        ):
            c.add(f"busy_s must be a finite number of seconds >= 0 or null, got {busy!r:.40}")
        if data.get("params") is not None and not isinstance(data["params"], dict):
            c.add(f"params must be an object of the trial's params or null, got {data['params']!r:.50}")
        history = data.get("attempts", [])
        if not isinstance(history, list) or len(history) > MAX_ATTEMPT_HISTORY:
            c.add(f"attempts must be a list of at most {MAX_ATTEMPT_HISTORY} objects, got {history!r:.80}")
        elif not all(isinstance(a, dict) for a in history):
            c.add("attempts must hold objects ({attempt, worker_id, resume_step, last_step})")
        if (
            data.get("status") == "succeeded"
            and data.get("task_type") == "reduce"
            and not data.get("artifact_uri")
        ):
            c.add("artifact_uri is required for a succeeded reduce result: the next round starts from it")
        if c.problems:
            raise ValidationError("ShardResult", c.problems)
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        values["metrics"] = values_of
        values["generation"] = int(data.get("generation") or 0)
        values["backup"] = int(data.get("backup") or 0)
        values["price_per_hour"] = float(data.get("price_per_hour") or 0.0)
        values["busy_s"] = None if busy is None else float(busy)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data: a non-finite metric becomes the string ``"nan"``, ``"inf"`` or ``"-inf"``,
        so the body is standard JSON (``from_json`` reads those strings back as floats)."""
        data = asdict(self)
        data["metrics"] = {k: finite_or_name(v) for k, v in self.metrics.items()}
        # Added after schema 1 shipped: absent rather than null, so bodies without a resume stay as
        # they were.
        if data["resume_step"] is None:
            del data["resume_step"]
        if not data["attempts"]:
            del data["attempts"]
        if not data["generation"]:
            del data["generation"]
        if not data["price_per_hour"]:
            del data["price_per_hour"]
        if data["params"] is None:
            del data["params"]
        if data["busy_s"] is None:
            del data["busy_s"]
        if not data["backup"]:
            del data["backup"]
        return data


# The spellings of a non-finite metric in standard JSON (what ``ShardResult.to_dict`` writes).
NONFINITE_NAMES = ("nan", "inf", "-inf")


def metric_value(value: Any) -> float | None:
    """A metric as a float (NaN and ±inf included, from the non-standard JSON tokens or the strings
    ``"nan"``/``"inf"``/``"-inf"``); None when it is no number at all."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in NONFINITE_NAMES:
        return float(value.strip().lower())
    return None


def finite_or_name(value: float) -> float | str:
    """``value`` when finite, else its name in ``NONFINITE_NAMES``: what standard JSON can hold."""
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


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
    # Sweep trials of the current round that diverged (a non-finite objective): among ``done``, never
    # among ``failed`` (``shardq.core.verdicts``).
    diverged: int = 0
    # Set while the current phase's tasks are not all on the queue: "ENQUEUING 500/700 sent" (a
    # fan-out under way, or one that died midway: submit the same request again to finish it).
    enqueuing: str | None = None
    # What its counted outcomes cost so far (USD; 0 with unpriced workers), its ``budget_usd``, and
    # the budget stop's time once its budget is spent (``shardq.core.spend``).
    cost_usd: float = 0.0
    budget_usd: float | None = None
    budget_stopped_at: str | None = None
    # Whose job it is and how urgent (shardq.core.tenancy), and, with windows
    # (shardq.core.admission), the current round's tasks sent but not counted and the window they
    # are held to.
    tenant: str | None = None
    priority: int | None = None
    queued: int | None = None
    window: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return asdict(self)
