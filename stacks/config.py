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
RECOMMENDED_MIN_RECEIVE_COUNT = 5

_STACK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
_KMS_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+$")
_S3_BUCKET_ARN = re.compile(r"^arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_TAG_KEY = re.compile(r"^[\w .:/=+\-@]{1,128}$")


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

    @property
    def max_receive_count_below_recommended(self) -> bool:
        """True when redrive happens sooner than the design's minimum of 5 receives."""
        return self.max_receive_count < RECOMMENDED_MIN_RECEIVE_COUNT


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
}


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
    return problems
