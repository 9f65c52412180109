"""Typed shardq configuration, read once from the CDK context (cdk.json, ``-c key=value``).

Everything below ``app.py`` receives plain values from :class:`ShardqConfig`; no construct reads
context itself. An unknown key or a bad value fails synth with ONE :class:`ConfigError` that names
every offending key and how to fix it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
CDK_JSON = REPO_ROOT / "cdk.json"

# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 3653)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
QUEUE_ENCRYPTIONS = ("sqs-managed", "kms")
FLEET_KINDS = ("off", "gpu", "fargate")
# NVIDIA GPU families the ECS GPU-optimized AMI (x86_64) serves; Graviton (g5g) and AMD (g4ad) are excluded.
GPU_INSTANCE_FAMILIES = (
    "g4dn", "g5", "g6", "g6e", "g6f", "gr6", "p3", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en", "p6-b200",
)  # fmt: skip
# Fargate's valid task sizes: CPU units → (min MiB, max MiB, step MiB), plus the two fixed small sizes.
FARGATE_MEMORY = {
    256: (512, 2048, None),
    512: (1024, 4096, 1024),
    1024: (2048, 8192, 1024),
    2048: (4096, 16384, 1024),
    4096: (8192, 30720, 1024),
    8192: (16384, 61440, 4096),
    16384: (32768, 122880, 8192),
}

_STACK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
_KMS_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+$")
_S3_BUCKET_ARN = re.compile(r"^arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_TAG_KEY = re.compile(r"^[\w .:/=+\-@]{1,128}$")
_INSTANCE_TYPE = re.compile(r"^([a-z][a-z0-9-]*)\.([a-z0-9]+)$")
# registry/repository[:tag][@digest], e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/shardq-worker:1.4
_IMAGE_REF = re.compile(
    r"^[a-z0-9][a-z0-9.-]*(:[0-9]+)?(/[a-z0-9._-]+)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$"
)
_DOCKER_IMAGE = re.compile(r"^[a-z0-9][a-z0-9./_:@-]*$")


class ConfigError(ValueError):
    """One or more context values are unknown or invalid; the message lists each with its fix."""


@dataclass(frozen=True, kw_only=True)
class ShardqConfig:
    """Every shardq context key with its default. docs/DEPLOYING.md documents each one."""

    stack_name: str = "shardq"
    max_receive_count: int = 5
    task_visibility_timeout_seconds: int = 300
    fifo_high_throughput: bool = False
    queue_encryption: str = "sqs-managed"
    queue_kms_key_arn: str | None = None
    results_batch_window_seconds: int = 5
    aggregator_max_concurrency: int = 5
    aggregator_reserved_concurrency: int | None = None
    job_ttl_days: int = 90
    log_level: str = "INFO"
    log_retention_days: int = 30
    artifact_expiry_days: int | None = None
    noncurrent_version_expiry_days: int = 30
    access_log_retention_days: int = 365
    dataset_bucket_arns: tuple[str, ...] = ()
    alarm_email: str | None = None
    oldest_task_age_alarm_seconds: int = 3600
    powertools_layer: bool = True
    powertools_layer_version: int = 38
    tags: Mapping[str, str] = field(default_factory=dict)
    # -- optional worker fleet (stacks/components/fleet.py; docs/OPERATIONS.md) --------------------
    fleet: str = "off"
    fleet_instance_types: tuple[str, ...] = ("g5.xlarge", "g6.xlarge")
    fleet_on_demand_base_capacity: int = 0
    fleet_on_demand_percentage: int = 0
    fleet_max_workers: int = 8
    fleet_backlog_per_worker: int = 1
    fleet_scale_to_zero_after_minutes: int = 15
    fleet_task_cpu: int = 2048
    fleet_task_memory_mib: int = 12288
    fleet_root_volume_gib: int = 100
    fleet_nat_gateways: int = 0
    fleet_image_uri: str | None = None
    fleet_base_image: str | None = None

    @property
    def fleet_enabled(self) -> bool:
        """True when the context asks for a worker fleet (``fleet`` is "gpu" or "fargate")."""
        return self.fleet != "off"

    @classmethod
    def from_context(cls, context: Mapping[str, Any]) -> ShardqConfig:
        """Build the config from a context mapping, validating every key.

        Keys that belong to the CDK itself (feature flags ``@aws-cdk/...``, ``aws:cdk:...``, lookups
        cached in cdk.context.json, which all contain ``:``) and comment keys (``//``) are ignored.

        Raises
        ------
        ConfigError
            Listing every unknown key and every bad value, each with its fix.
        """
        known = {f.name for f in fields(cls)}
        problems: list[str] = []
        values: dict[str, Any] = {}
        for key, raw in context.items():
            if key.startswith("//") or ":" in key or key.startswith("@"):
                continue
            if key not in known:
                close = [k for k in sorted(known) if k.split("_")[0] == key.split("_")[0]]
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                problems.append(
                    f"{key}: unknown context key{hint}; fix: remove it or use one of the keys listed "
                    "in docs/DEPLOYING.md"
                )
                continue
            try:
                values[key] = _PARSERS[key](raw)
            except _BadValue as err:
                problems.append(f"{key}: {err} (got {raw!r})")
        if not problems:
            problems.extend(_combination_problems(values))
        if problems:
            raise ConfigError(
                "shardq context is invalid (cdk.json 'context' or -c key=value):\n  - "
                + "\n  - ".join(problems)
            )
        return cls(**values)


def load_cdk_json_context(path: Path = CDK_JSON) -> dict[str, Any]:
    """Return the ``context`` object of cdk.json (what the CDK CLI passes to the app)."""
    return dict(json.loads(path.read_text(encoding="utf-8"))["context"])


class _BadValue(ValueError):
    pass


def _as_int(lo: int, hi: int, fix: str = "") -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        # -c key=value passes strings; cdk.json passes JSON numbers. bool is an int in Python: refuse it.
        if isinstance(raw, bool):
            raise _BadValue(f"must be an integer between {lo} and {hi}{fix}")
        try:
            value = int(raw) if isinstance(raw, int | str) else None
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise _BadValue(f"must be an integer between {lo} and {hi}{fix}")
        return value

    return parse


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def wrapped(raw: Any) -> Any:
        return None if raw is None or raw in {"", "null"} else parse(raw)

    return wrapped


def _as_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise _BadValue("must be true or false")


def _one_of(choices: tuple[Any, ...], fix: str = "") -> Callable[[Any], Any]:
    def parse(raw: Any) -> Any:
        value = int(raw) if isinstance(raw, str) and raw.isdigit() else raw
        if isinstance(value, bool) or value not in choices:
            raise _BadValue(f"must be one of {', '.join(map(str, choices))}{fix}")
        return value

    return parse


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        if not isinstance(raw, str) or not pattern.match(raw):
            raise _BadValue(f"must be {what}")
        return raw

    return parse


def _bucket_arns(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):  # -c dataset_bucket_arns='["arn:aws:s3:::a"]'
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            raise _BadValue("must be a JSON list of S3 bucket ARNs like arn:aws:s3:::my-datasets") from err
    if not isinstance(raw, list) or not all(isinstance(a, str) and _S3_BUCKET_ARN.match(a) for a in raw):
        raise _BadValue(
            "must be a list of S3 bucket ARNs like arn:aws:s3:::my-datasets (bucket, not object, ARNs)"
        )
    return tuple(dict.fromkeys(raw))


def _tags(raw: Any) -> dict[str, str]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            raise _BadValue('must be a JSON object of string tags like {"team": "ml"}') from err
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _TAG_KEY.match(k) and len(v) <= 256
        for k, v in raw.items()
    ):
        raise _BadValue(
            'must be an object of string tags like {"team": "ml"} (keys ≤ 128, values ≤ 256 chars)'
        )
    return dict(raw)


def _instance_types(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):  # -c fleet_instance_types='["g5.xlarge"]' or g5.xlarge,g6.xlarge
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raw = [t.strip() for t in raw.split(",") if t.strip()]
    fix = ' like ["g5.xlarge", "g6.xlarge"]'
    if not isinstance(raw, list) or not raw or len(raw) > 20 or not all(isinstance(t, str) for t in raw):
        raise _BadValue(f"must be a list of 1 to 20 EC2 instance types{fix}")
    bad = [t for t in raw if not _INSTANCE_TYPE.match(t)]
    if bad:
        raise _BadValue(f"{', '.join(bad)} is not an EC2 instance type; fix: use names{fix}")
    return tuple(dict.fromkeys(raw))


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "stack_name": _matching(_STACK_NAME, "a CloudFormation stack name: a letter, then letters, digits or -"),
    "max_receive_count": _as_int(1, 1000, "; 5 or more is recommended"),
    "task_visibility_timeout_seconds": _as_int(
        30, 43200, "; workers extend it while they train, so it only needs to cover one heartbeat interval"
    ),
    "fifo_high_throughput": _as_bool,
    "queue_encryption": _one_of(QUEUE_ENCRYPTIONS),
    "queue_kms_key_arn": _optional(
        _matching(_KMS_KEY_ARN, "a KMS key ARN like arn:aws:kms:eu-west-1:123456789012:key/<id>")
    ),
    "results_batch_window_seconds": _as_int(
        1, 300, "; Lambda needs a window of at least 1 s for batches above 10"
    ),
    "aggregator_max_concurrency": _as_int(2, 1000, " (Lambda's MaximumConcurrency range)"),
    "aggregator_reserved_concurrency": _optional(_as_int(1, 1000)),
    "job_ttl_days": _as_int(1, 3650),
    "log_level": _one_of(LOG_LEVELS),
    "log_retention_days": _one_of(LOG_RETENTION_DAYS, " (the periods CloudWatch Logs accepts)"),
    "artifact_expiry_days": _optional(_as_int(1, 3650)),
    "noncurrent_version_expiry_days": _as_int(1, 3650),
    "access_log_retention_days": _as_int(1, 3650),
    "dataset_bucket_arns": _bucket_arns,
    "alarm_email": _optional(_matching(_EMAIL, "an email address")),
    "oldest_task_age_alarm_seconds": _as_int(60, 1_209_600),
    "powertools_layer": _as_bool,
    "powertools_layer_version": _as_int(1, 10_000),
    "tags": _tags,
    "fleet": _one_of(FLEET_KINDS, ' ("gpu": ECS on EC2 GPU instances; "fargate": CPU only)'),
    "fleet_instance_types": _instance_types,
    "fleet_on_demand_base_capacity": _as_int(
        0, 1000, " (workers always on On-Demand before the percentage applies)"
    ),
    "fleet_on_demand_percentage": _as_int(0, 100, " (percent On-Demand above the base; the rest is Spot)"),
    "fleet_max_workers": _as_int(1, 1000),
    "fleet_backlog_per_worker": _as_int(
        1, 1000, " (tasks queued or in flight per worker the fleet aims for)"
    ),
    "fleet_scale_to_zero_after_minutes": _as_int(1, 1440),
    "fleet_task_cpu": _as_int(256, 196_608, " (CPU units; 1024 = 1 vCPU)"),
    "fleet_task_memory_mib": _as_int(512, 2_000_000),
    "fleet_root_volume_gib": _as_int(30, 16_384, " (the GPU AMI needs 30; CUDA images need room)"),
    "fleet_nat_gateways": _as_int(0, 3, " (0: public subnets, no inbound; 1-3: private subnets behind NAT)"),
    "fleet_image_uri": _optional(
        _matching(
            _IMAGE_REF, "an image reference like 123456789012.dkr.ecr.eu-west-1.amazonaws.com/worker:1.0"
        )
    ),
    "fleet_base_image": _optional(
        _matching(
            _DOCKER_IMAGE, "a Docker image reference like pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
        )
    ),
}


def _fargate_size_problem(cpu: int, memory: int) -> str | None:
    if cpu not in FARGATE_MEMORY:
        sizes = ", ".join(map(str, FARGATE_MEMORY))
        return f"fleet_task_cpu: {cpu} is not a Fargate size; fix: use one of {sizes}"
    lo, hi, step = FARGATE_MEMORY[cpu]
    allowed = (512, 1024, 2048) if step is None else range(lo, hi + 1, step)
    if memory not in allowed:
        span = "512, 1024 or 2048" if step is None else f"{lo} to {hi} in steps of {step}"
        return f"fleet_task_memory_mib: {memory} MiB does not fit Fargate's {cpu} CPU units; fix: use {span}"
    return None


def _combination_problems(values: Mapping[str, Any]) -> list[str]:
    """Checks that involve more than one key (each key is already valid on its own)."""
    defaults = ShardqConfig()
    merged = {f.name: values.get(f.name, getattr(defaults, f.name)) for f in fields(ShardqConfig)}
    problems = []
    if merged["queue_kms_key_arn"] and merged["queue_encryption"] != "kms":
        problems.append(
            'queue_kms_key_arn: is only used with queue_encryption "kms"; fix: set queue_encryption to "kms" '
            "or remove queue_kms_key_arn"
        )
    reserved = merged["aggregator_reserved_concurrency"]
    if reserved is not None and reserved < merged["aggregator_max_concurrency"]:
        problems.append(
            f"aggregator_reserved_concurrency: {reserved} is below aggregator_max_concurrency "
            f"({merged['aggregator_max_concurrency']}), so the event source would be throttled; "
            "fix: raise it "
            "to at least aggregator_max_concurrency or remove it"
        )
    problems.extend(_fleet_problems(merged))
    return problems


def _fleet_problems(merged: Mapping[str, Any]) -> list[str]:
    """The fleet keys that only make sense together (checked whatever ``fleet`` is, so a typo in a
    disabled fleet's settings is caught before someone switches it on)."""
    problems = []
    kind = merged["fleet"]
    if merged["fleet_on_demand_base_capacity"] > merged["fleet_max_workers"]:
        problems.append(
            f"fleet_on_demand_base_capacity: {merged['fleet_on_demand_base_capacity']} is above "
            f"fleet_max_workers ({merged['fleet_max_workers']}); fix: lower it or raise fleet_max_workers"
        )
    if merged["fleet_image_uri"] and merged["fleet_base_image"]:
        problems.append(
            "fleet_base_image: only applies when the fleet builds the repository's Dockerfile, but "
            "fleet_image_uri names a ready image; fix: remove one of them"
        )
    if kind == "gpu":
        not_gpu = [t for t in merged["fleet_instance_types"] if t.split(".")[0] not in GPU_INSTANCE_FAMILIES]
        if not_gpu:
            problems.append(
                f"fleet_instance_types: {', '.join(not_gpu)} has no NVIDIA GPU the ECS GPU AMI (x86_64) "
                f"can use; fix: pick from the families {', '.join(GPU_INSTANCE_FAMILIES)}, or set "
                'fleet to "fargate" for CPU-only workers'
            )
    if kind == "fargate":
        size = _fargate_size_problem(merged["fleet_task_cpu"], merged["fleet_task_memory_mib"])
        if size:
            problems.append(size)
    return problems
