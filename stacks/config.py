"""Typed shardq configuration, read once from the CDK context (cdk.json, ``-c key=value``).

Everything below ``app.py`` receives plain values from :class:`ShardqConfig`; no construct reads
context itself. An unknown key or a bad value fails synth with ONE :class:`ConfigError` that names
every offending key and how to fix it. Each key's value parser lives in ``stacks.config_parsers``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from stacks import config_parsers as parsers
from stacks.config_parsers import BadValue

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
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# registry/repository[:tag][@digest], e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/shardq-worker:1.4
_IMAGE_REF = re.compile(
    r"^[a-z0-9][a-z0-9.-]*(:[0-9]+)?(/[a-z0-9._-]+)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$"
)
_DOCKER_IMAGE = re.compile(r"^[a-z0-9][a-z0-9./_:@-]*$")
# The code the repository's Dockerfile ships and allows (its ENV SHARDQ_ALLOW; a test pins the two).
BUNDLED_IMAGE_ALLOW = "examples.*"


class ConfigError(ValueError):
    """One or more context values are unknown or invalid; the message lists each with its fix."""


def _key(
    *, parse: Callable[[Any], Any], doc: str, default: Any = MISSING, default_factory: Any = MISSING
) -> Any:
    """Declare one context key: its default, the parser that validates a raw value, and its doc.

    The field name is the context key. cdk.json's ``context["//"]`` and docs/DEPLOYING.md document
    the same keys (tests/infra/test_config.py checks they match this definition).
    """
    return field(default=default, default_factory=default_factory, metadata={"parse": parse, "doc": doc})


@dataclass(frozen=True, kw_only=True)
class ShardqConfig:
    """Every shardq context key with its default. docs/DEPLOYING.md documents each one."""

    stack_name: str = _key(
        default="shardq",
        parse=parsers.matching(
            _STACK_NAME, "a CloudFormation stack name: a letter, then letters, digits or -"
        ),
        doc='CloudFormation stack name. Default "shardq".',
    )
    max_receive_count: int = _key(
        default=5,
        parse=parsers.as_int(1, 1000, "; 5 or more is recommended"),
        doc=(
            "Receives before a task or result moves to its DLQ (1..1000). Default 5; below 5 "
            "synthesizes with a warning."
        ),
    )
    task_visibility_timeout_seconds: int = _key(
        default=300,
        parse=parsers.as_int(
            30,
            43200,
            "; workers extend it while they train, so it only needs to cover one heartbeat interval",
        ),
        doc=(
            "Worker lease on a task per receive, in seconds (30..43200); workers heartbeat to extend "
            "it. Default 300."
        ),
    )
    fifo_high_throughput: bool = _key(
        default=False,
        parse=parsers.as_bool,
        doc=(
            "High-throughput FIFO on the task queue (DeduplicationScope=messageGroup, "
            "FifoThroughputLimit=perMessageGroupId). Default false."
        ),
    )
    queue_encryption: str = _key(
        default="sqs-managed",
        parse=parsers.one_of(QUEUE_ENCRYPTIONS),
        doc=(
            '"sqs-managed" (SSE-SQS) or "kms" (SSE-KMS with a customer key; grants follow). Default '
            '"sqs-managed".'
        ),
    )
    queue_kms_key_arn: str | None = _key(
        default=None,
        parse=parsers.optional(
            parsers.matching(_KMS_KEY_ARN, "a KMS key ARN like arn:aws:kms:eu-west-1:123456789012:key/<id>")
        ),
        doc='With queue_encryption "kms": use this existing key instead of creating one. Default null.',
    )
    results_batch_window_seconds: int = _key(
        default=5,
        parse=parsers.as_int(1, 300, "; Lambda needs a window of at least 1 s for batches above 10"),
        doc="MaximumBatchingWindow of the aggregator's event source on the bulk results queue, seconds "
        "(1..300); round-closing results take the fast results queue, which has none. Default 5.",
    )
    aggregator_max_concurrency: int = _key(
        default=5,
        parse=parsers.as_int(2, 1000, " (Lambda's MaximumConcurrency range)"),
        doc=(
            "Aggregator event source MaximumConcurrency (2..1000): caps DynamoDB write pressure. Default 5."
        ),
    )
    aggregator_reserved_concurrency: int | None = _key(
        default=None,
        parse=parsers.optional(parsers.as_int(1, 1000)),
        doc="Reserved concurrency of the aggregator (>= aggregator_max_concurrency) or null. Default null.",
    )
    job_ttl_days: int = _key(
        default=90,
        parse=parsers.as_int(1, 3650),
        doc=(
            "Days a finished job record is kept before DynamoDB TTL deletes it (SHARDQ_JOB_TTL_DAYS)."
            " Default 90."
        ),
    )
    log_level: str = _key(
        default="INFO",
        parse=parsers.one_of(LOG_LEVELS),
        doc="LOG_LEVEL of the Lambdas: DEBUG, INFO, WARNING, ERROR, CRITICAL. Default INFO.",
    )
    log_retention_days: int = _key(
        default=30,
        parse=parsers.one_of(LOG_RETENTION_DAYS, " (the periods CloudWatch Logs accepts)"),
        doc=(
            "Retention of the Lambda log groups, a CloudWatch Logs period (1, 3, 5, 7, 14, 30, 60, "
            "90, ...). Default 30."
        ),
    )
    artifact_expiry_days: int | None = _key(
        default=None,
        parse=parsers.optional(parsers.as_int(1, 3650)),
        doc=(
            "Expire objects under jobs/ in the artifact bucket after N days, or null to keep them. "
            "Default null."
        ),
    )
    noncurrent_version_expiry_days: int = _key(
        default=30,
        parse=parsers.as_int(1, 3650),
        doc="Days overwritten/deleted artifact versions are kept. Default 30.",
    )
    access_log_retention_days: int = _key(
        default=365,
        parse=parsers.as_int(1, 3650),
        doc="Days S3 server access logs are kept. Default 365.",
    )
    dataset_bucket_arns: tuple[str, ...] = _key(
        default=(),
        parse=parsers.bucket_arns,
        doc=(
            "S3 bucket ARNs workers may read datasets from (the artifact bucket is always readable); "
            "the splitter refuses s3:// data elsewhere. Default []."
        ),
    )
    scheduling: str | None = _key(
        default=parsers.scheduling({}),
        parse=parsers.scheduling,
        doc=(
            "Tenants, weights, quotas, priority aging and task windows (shardq/core/tenancy.py documents "
            "the shape; docs/DEPLOYING.md). null: rounds go on the queue whole and any tenant name is "
            "accepted. Default: windows of 2 per lane, one open tenant space."
        ),
    )
    alarm_email: str | None = _key(
        default=None,
        parse=parsers.optional(parsers.matching(_EMAIL, "an email address")),
        doc="Email address subscribed to the alarm topic (must confirm), or null. Default null.",
    )
    oldest_task_age_alarm_seconds: int = _key(
        default=3600,
        parse=parsers.as_int(60, 1_209_600),
        doc="Alarm when the oldest task has waited longer than this many seconds. Default 3600.",
    )
    powertools_layer: bool = _key(
        default=True,
        parse=parsers.as_bool,
        doc="Attach the public Powertools for AWS Lambda layer. Default true.",
    )
    powertools_layer_version: int = _key(
        default=38,
        parse=parsers.as_int(1, 10_000),
        doc="Version of the layer AWSLambdaPowertoolsPythonV3-python314-arm64. Default 38.",
    )
    tags: Mapping[str, str] = _key(
        default_factory=dict,
        parse=parsers.tags,
        doc='Extra tags for every resource, e.g. {"team": "ml"}. Default {}.',
    )
    # -- optional worker fleet (stacks/components/fleet/; docs/OPERATIONS.md) ---------------------
    fleet: str = _key(
        default="off",
        parse=parsers.one_of(FLEET_KINDS, ' ("gpu": ECS on EC2 GPU instances; "fargate": CPU only)'),
        doc=(
            'Optional ECS worker fleet: "off", "gpu" (EC2 GPU instances, one GPU per task) or '
            '"fargate" (CPU only). Default "off".'
        ),
    )
    fleet_instance_types: tuple[str, ...] = _key(
        default=("g5.xlarge", "g6.xlarge"),
        parse=parsers.instance_types,
        doc=(
            "GPU fleet: EC2 instance types of the Auto Scaling group (NVIDIA families g4dn, g5, g6, "
            'g6e, p4d, p5, ...). Default ["g5.xlarge", "g6.xlarge"].'
        ),
    )
    fleet_on_demand_base_capacity: int = _key(
        default=0,
        parse=parsers.as_int(0, 1000, " (workers always on On-Demand before the percentage applies)"),
        doc=(
            "Workers (GPU: instances; Fargate: tasks) always On-Demand before the percentage applies."
            " Default 0."
        ),
    )
    fleet_on_demand_percentage: int = _key(
        default=0,
        parse=parsers.as_int(0, 100, " (percent On-Demand above the base; the rest is Spot)"),
        doc="Percent On-Demand above the base, 0..100; the rest is Spot. Default 0 (all Spot).",
    )
    fleet_max_workers: int = _key(
        default=8,
        parse=parsers.as_int(1, 1000),
        doc="Most worker tasks (and GPU instances) the fleet scales to, 1..1000. Default 8.",
    )
    fleet_backlog_per_worker: int = _key(
        default=1,
        parse=parsers.as_int(1, 1000, " (tasks queued or in flight per worker the fleet aims for)"),
        doc=(
            "Scaling target: runnable tasks per worker, where runnable = visible + in-flight tasks capped "
            "at the lanes RUNNING jobs can keep busy; 1..1000. Default 1."
        ),
    )
    fleet_scale_to_zero_after_minutes: int = _key(
        default=15,
        parse=parsers.as_int(1, 1440),
        doc=(
            "Minutes with no task queued or in flight before the fleet scales to zero, 1..1440. Default 15."
        ),
    )
    fleet_task_cpu: int = _key(
        default=2048,
        parse=parsers.as_int(256, 196_608, " (CPU units; 1024 = 1 vCPU)"),
        doc="CPU units per worker task (1024 = 1 vCPU); on Fargate a Fargate size. Default 2048.",
    )
    fleet_task_memory_mib: int = _key(
        default=12288,
        parse=parsers.as_int(512, 2_000_000),
        doc=(
            "Memory per worker task, MiB (EC2: soft reservation; Fargate: must fit the CPU size). "
            "Default 12288."
        ),
    )
    fleet_root_volume_gib: int = _key(
        default=100,
        parse=parsers.as_int(30, 16_384, " (the GPU AMI needs 30; CUDA images need room)"),
        doc="GPU fleet: encrypted gp3 root volume per instance, GiB (30..16384). Default 100.",
    )
    fleet_nat_gateways: int = _key(
        default=0,
        parse=parsers.as_int(0, 3, " (0: public subnets, no inbound; 1-3: private subnets behind NAT)"),
        doc=(
            "0: workers in public subnets (public IP, no inbound rule, no idle cost); 1..3: private "
            "subnets behind NAT gateways. Default 0."
        ),
    )
    fleet_image_uri: str | None = _key(
        default=None,
        parse=parsers.optional(
            parsers.matching(
                _IMAGE_REF, "an image reference like 123456789012.dkr.ecr.eu-west-1.amazonaws.com/worker:1.0"
            )
        ),
        doc=(
            "Run this image instead of building the repository's Dockerfile (ECR URIs get pull "
            "permission). Default null."
        ),
    )
    fleet_base_image: str | None = _key(
        default=None,
        parse=parsers.optional(
            parsers.matching(
                _DOCKER_IMAGE, "a Docker image reference like pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
            )
        ),
        doc=(
            "BASE_IMAGE build arg of the repository's Dockerfile; null picks a CUDA/PyTorch image "
            "(gpu) or python:3.11-slim (fargate). Default null."
        ),
    )
    fleet_allow: str | None = _key(
        default=None,
        parse=parsers.allow_list,
        doc=(
            'Modules the fleet\'s workers may run (SHARDQ_ALLOW): patterns like "mypkg.*", '
            'comma-separated or a list; "*" runs any module a task names. null: "examples.*" '
            "(the repository's image); required with fleet_image_uri. Default null."
        ),
    )

    @property
    def fleet_enabled(self) -> bool:
        """True when the context asks for a worker fleet (``fleet`` is "gpu" or "fargate")."""
        return self.fleet != "off"

    @property
    def fleet_worker_allow(self) -> str:
        """The fleet workers' SHARDQ_ALLOW: ``fleet_allow``, else what the bundled image ships."""
        return self.fleet_allow or BUNDLED_IMAGE_ALLOW

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
        parsers = {f.name: f.metadata["parse"] for f in fields(cls)}
        known = set(parsers)
        problems: list[str] = []
        values: dict[str, Any] = {}
        failed: set[str] = set()
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
                values[key] = parsers[key](raw)
            except BadValue as err:
                problems.append(f"{key}: {err} (got {raw!r})")
                failed.add(key)
        # Checks across keys run on the keys that parsed; one naming a key that failed would only
        # repeat that key's problem with a default standing in for its value.
        problems.extend(
            p for p in _combination_problems(values) if not any(re.search(rf"\b{k}\b", p) for k in failed)
        )
        if problems:
            raise ConfigError(
                "shardq context is invalid (cdk.json 'context' or -c key=value):\n  - "
                + "\n  - ".join(problems)
            )
        return cls(**values)


def context_docs() -> dict[str, str]:
    """Each context key with its one-line doc (what cdk.json's ``context["//"]`` must say)."""
    return {f.name: f.metadata["doc"] for f in fields(ShardqConfig)}


def load_cdk_json_context(path: Path = CDK_JSON) -> dict[str, Any]:
    """Return the ``context`` object of cdk.json (what the CDK CLI passes to the app)."""
    return dict(json.loads(path.read_text(encoding="utf-8"))["context"])


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
    if merged["fleet_image_uri"] and not merged["fleet_allow"]:
        # The task definition's SHARDQ_ALLOW overrides the image's own, and the stack cannot see
        # what a user's image ships: the template states whose code the fleet runs.
        problems.append(
            "fleet_allow: fleet_image_uri names your own image, so the stack cannot know which code "
            'its workers may run; fix: set fleet_allow to the packages the image ships, like "mypkg.*"'
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
