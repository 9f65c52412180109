"""Message contracts: the one definition of every message shardq sends.

TrainingRequest (client → splitter), ShardTask (splitter/aggregator → workers),
ShardResult (workers / DLQ handler → aggregator) and JobView (job record → people).
Each is a frozen dataclass with ``from_dict`` (validating, collecting *every*
problem before raising once) and ``to_dict``/``to_json`` (deterministic, so
content-based deduplication sees identical bodies for identical messages).

Plain dataclasses instead of pydantic keep the Lambdas' cold start small
(see BENCHMARKS.md) and let every error message name the field, the value and
the fix.

The definitions live by concern, and this module is where callers import them from:
``validation`` (limits, the problem-collecting checker, ValidationError), ``request_fields`` (the
request's parts: dataset, objective, search, strategy...), ``request`` (TrainingRequest) and
``messages`` (ShardTask, ShardResult, JobView).
"""

from __future__ import annotations

from shardq.core.messages import (
    NONFINITE_NAMES,
    JobView,
    ShardResult,
    ShardTask,
    finite_or_name,
    metric_value,
)
from shardq.core.request import TrainingRequest
from shardq.core.request_fields import (
    DISTRIBUTIONS,
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
    count_trials,
    max_round_tasks,
)
from shardq.core.validation import (
    DEFAULT_ENTRYPOINT,
    DEFAULT_MAX_PARALLEL,
    DIRECTIONS,
    ENTRYPOINT_RE,
    JOB_ID_RE,
    JOB_STATUSES,
    KINDS,
    MAX_GATHERED_TASKS,
    MAX_NESTING,
    MAX_NUM_SAMPLES,
    MAX_PARALLEL,
    MAX_REQUEST_BYTES,
    MAX_ROUNDS,
    MAX_SHARDS,
    RESULT_STATUSES,
    SCHEMA_VERSION,
    TASK_TYPES,
    TERMINAL_STATUSES,
    Kind,
    TaskType,
    ValidationError,
)

__all__ = [
    "DEFAULT_ENTRYPOINT",
    "DEFAULT_MAX_PARALLEL",
    "DIRECTIONS",
    "DISTRIBUTIONS",
    "EARLY_STOPPING_METHODS",
    "ENTRYPOINT_RE",
    "JOB_ID_RE",
    "JOB_STATUSES",
    "KINDS",
    "MAX_GATHERED_TASKS",
    "MAX_NESTING",
    "MAX_NUM_SAMPLES",
    "MAX_PARALLEL",
    "MAX_REQUEST_BYTES",
    "MAX_ROUNDS",
    "MAX_ROUND_DEADLINE_S",
    "MAX_SHARDS",
    "MAX_TASK_TIMEOUT_S",
    "NONFINITE_NAMES",
    "RESULT_STATUSES",
    "SCHEMA_VERSION",
    "SEARCH_METHODS",
    "SERVER_STEP_STRATEGIES",
    "STRATEGIES",
    "STRATEGY_RANGES",
    "TASK_TYPES",
    "TERMINAL_STATUSES",
    "Dataset",
    "EarlyStopping",
    "JobView",
    "Kind",
    "Objective",
    "Participation",
    "Quorum",
    "Search",
    "ShardResult",
    "ShardTask",
    "Strategy",
    "TaskType",
    "TrainingRequest",
    "ValidationError",
    "count_trials",
    "finite_or_name",
    "max_round_tasks",
    "metric_value",
]
