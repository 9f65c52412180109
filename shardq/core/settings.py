"""Settings: what the Lambdas and the CLI need to know about the deployed stack, in one place.

The Lambdas read them from the environment the stack gives each function (``Settings.from_env``);
the CLI reads the same fields from the stack's outputs (``Settings.from_outputs``). Every field
has a name in both maps (``ENV`` and ``OUTPUTS``), so a field added to one cannot be dropped by
the other: ``tests/unit/test_settings.py`` round-trips every field through both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar


class SettingsError(RuntimeError):
    """A required setting is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    """What the handlers and the CLI need to know about the deployed stack.

    Each field comes from the environment variable named in ``ENV`` (Lambdas) or the stack
    output named in ``OUTPUTS`` (CLI).
    """

    job_table: str
    task_queue_url: str
    results_queue_url: str
    artifact_bucket: str
    event_bus_name: str = "default"
    job_ttl_days: int = 90
    max_receive_count: int = 5
    splitter_function: str | None = None
    # SendMessageBatch calls in flight during a fan-out. 8 saturates a plain FIFO queue's
    # 300 calls/s; high-throughput FIFO needs about 8 per partition (BENCHMARKS.md, quota model).
    fanout_in_flight: int = 8
    # Buckets the workers can read (the artifact bucket and dataset_bucket_arns): a request naming
    # an s3:// URI elsewhere is refused at submit instead of failing every task with AccessDenied.
    # None: no check (the variable is unset).
    data_buckets: tuple[str, ...] | None = None
    # Where the results DLQ handler parks dead results no job can record (shardq.core.parking);
    # None: a stack deployed before the parked queue existed (they stay in the DLQ).
    parked_results_queue_url: str | None = None
    # The zero-window results queue for messages that close or move a round
    # (shardq.core.result_routes); None: a stack deployed before it (every result takes the bulk one).
    fast_results_queue_url: str | None = None
    # The ``scheduling`` configuration (tenants, weights, quotas, windows) as JSON
    # (shardq.core.tenancy); None: a stack deployed before it (the defaults: one open tenant space).
    scheduling: str | None = None

    ENV: ClassVar[dict[str, str]] = {
        "job_table": "SHARDQ_JOB_TABLE",
        "task_queue_url": "SHARDQ_TASK_QUEUE_URL",
        "results_queue_url": "SHARDQ_RESULTS_QUEUE_URL",
        "artifact_bucket": "SHARDQ_ARTIFACT_BUCKET",
        "event_bus_name": "SHARDQ_EVENT_BUS_NAME",
        "job_ttl_days": "SHARDQ_JOB_TTL_DAYS",
        "max_receive_count": "SHARDQ_MAX_RECEIVE_COUNT",
        "splitter_function": "SHARDQ_SPLITTER_FUNCTION",
        "fanout_in_flight": "SHARDQ_FANOUT_IN_FLIGHT",
        "data_buckets": "SHARDQ_DATA_BUCKETS",
        "parked_results_queue_url": "SHARDQ_PARKED_RESULTS_QUEUE_URL",
        "fast_results_queue_url": "SHARDQ_FAST_RESULTS_QUEUE_URL",
        "scheduling": "SHARDQ_SCHEDULING",
    }
    # The stack's CfnOutput ids. Outputs a stack deployed before they existed lacks fall back to
    # the field's default (the optional fields only), as the Lambdas' environment does.
    OUTPUTS: ClassVar[dict[str, str]] = {
        "job_table": "JobTableName",
        "task_queue_url": "TaskQueueUrl",
        "results_queue_url": "ResultsQueueUrl",
        "artifact_bucket": "ArtifactBucketName",
        "event_bus_name": "EventBusName",
        "job_ttl_days": "JobTtlDays",
        "max_receive_count": "MaxReceiveCount",
        "splitter_function": "SplitterFunctionName",
        "fanout_in_flight": "FanoutInFlight",
        "data_buckets": "DataBuckets",
        "parked_results_queue_url": "ParkedResultsQueueUrl",
        "fast_results_queue_url": "FastResultsQueueUrl",
        "scheduling": "Scheduling",
    }
    REQUIRED: ClassVar[tuple[str, ...]] = (
        "job_table",
        "task_queue_url",
        "results_queue_url",
        "artifact_bucket",
    )
    INTEGERS: ClassVar[tuple[str, ...]] = ("job_ttl_days", "max_receive_count", "fanout_in_flight")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Parse the environment; one error names every missing or bad variable.

        Parameters
        ----------
        env:
            The environment (``os.environ`` by default).
        """
        return cls._parse(
            os.environ if env is None else env,
            cls.ENV,
            "{key} is not set (the stack sets it; set it by hand to run outside Lambda)",
            "{key} must be an integer, got {raw!r}",
        )

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, str]) -> Settings:
        """Parse the stack's outputs (``shardq outputs --json``); one error names every problem.

        Parameters
        ----------
        outputs:
            Output key → value, as CloudFormation's DescribeStacks or an outputs file gives them.
        """
        return cls._parse(
            outputs,
            cls.OUTPUTS,
            "output {key} is missing; redeploy the stack (or add {key} to the outputs file)",
            "output {key} must be an integer, got {raw!r}; redeploy the stack",
        )

    @classmethod
    def _parse(cls, source: Mapping[str, str], names: dict[str, str], missing: str, bad_int: str) -> Settings:
        problems = [missing.format(key=names[name]) for name in cls.REQUIRED if not source.get(names[name])]
        values: dict[str, Any] = {}
        for name in cls.INTEGERS:
            raw = source.get(names[name])
            if raw:
                try:
                    values[name] = int(raw)
                except ValueError:
                    problems.append(bad_int.format(key=names[name], raw=raw))
        if problems:
            raise SettingsError("shardq settings: " + "; ".join(problems))
        for name in cls.REQUIRED:
            values[name] = source[names[name]]
        values["event_bus_name"] = source.get(names["event_bus_name"]) or "default"
        values["splitter_function"] = source.get(names["splitter_function"]) or None
        values["data_buckets"] = _names(source.get(names["data_buckets"]))
        values["parked_results_queue_url"] = source.get(names["parked_results_queue_url"]) or None
        values["fast_results_queue_url"] = source.get(names["fast_results_queue_url"]) or None
        values["scheduling"] = source.get(names["scheduling"]) or None
        return cls(**values)

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings."""
        return self._render(self.ENV)

    def as_outputs(self) -> dict[str, str]:
        """The stack outputs that reproduce these settings."""
        return self._render(self.OUTPUTS)

    def _render(self, names: dict[str, str]) -> dict[str, str]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[names[f.name]] = ",".join(value) if isinstance(value, tuple) else str(value)
        return out


def _names(raw: str | None) -> tuple[str, ...] | None:
    if raw is None or not raw.strip():
        return None
    return tuple(name.strip() for name in raw.split(",") if name.strip())
