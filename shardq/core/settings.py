"""Settings read once from the environment the stack gives each Lambda."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


class SettingsError(RuntimeError):
    """A required environment variable is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    """What the handlers need to know about the deployed stack.

    Each field comes from the environment variable named in ``ENV``.
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

    ENV = {
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
    }
    REQUIRED = ("job_table", "task_queue_url", "results_queue_url", "artifact_bucket")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Parse the environment; one error names every missing or bad variable."""
        env = os.environ if env is None else env
        problems = [
            f"{cls.ENV[name]} is not set (the stack sets it; set it by hand to run outside Lambda)"
            for name in cls.REQUIRED
            if not env.get(cls.ENV[name])
        ]
        ints: dict[str, int] = {}
        for name in ("job_ttl_days", "max_receive_count", "fanout_in_flight"):
            raw = env.get(cls.ENV[name])
            if raw:
                try:
                    ints[name] = int(raw)
                except ValueError:
                    problems.append(f"{cls.ENV[name]} must be an integer, got {raw!r}")
        if problems:
            raise SettingsError("shardq settings: " + "; ".join(problems))
        return cls(
            job_table=env[cls.ENV["job_table"]],
            task_queue_url=env[cls.ENV["task_queue_url"]],
            results_queue_url=env[cls.ENV["results_queue_url"]],
            artifact_bucket=env[cls.ENV["artifact_bucket"]],
            event_bus_name=env.get(cls.ENV["event_bus_name"]) or "default",
            splitter_function=env.get(cls.ENV["splitter_function"]) or None,
            data_buckets=_names(env.get(cls.ENV["data_buckets"])),
            **ints,
        )

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings."""
        out = {}
        for name, var in self.ENV.items():
            value = getattr(self, name)
            if value is not None:
                out[var] = ",".join(value) if isinstance(value, tuple) else str(value)
        return out


def _names(raw: str | None) -> tuple[str, ...] | None:
    if raw is None or not raw.strip():
        return None
    return tuple(name.strip() for name in raw.split(",") if name.strip())
