"""Parsers of one context value each, for ``stacks.config.ShardqConfig``'s keys.

A parser takes the raw value (a JSON value from cdk.json, or a string from ``-c key=value``)
and returns the typed one, or raises :class:`BadValue` with what the value must be and how to fix
it; ``ShardqConfig.from_context`` collects every key's problem into one ``ConfigError``. Keys
parsed the way the runtime parses them (``scheduling``, ``fleet_allow``) use the runtime's own
parser, read by path (``stacks/tenancy_config.py``, ``stacks/worker_trust.py``): stacks import no
shardq runtime module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from stacks.tenancy_config import scheduling_context
from stacks.worker_trust import trust

_S3_BUCKET_ARN = re.compile(r"^arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_TAG_KEY = re.compile(r"^[\w .:/=+\-@]{1,128}$")
_INSTANCE_TYPE = re.compile(r"^([a-z][a-z0-9-]*)\.([a-z0-9]+)$")


class BadValue(ValueError):
    pass


def as_int(lo: int, hi: int, fix: str = "") -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        # -c key=value passes strings; cdk.json passes JSON numbers. bool is an int in Python: refuse it.
        if isinstance(raw, bool):
            raise BadValue(f"must be an integer between {lo} and {hi}{fix}")
        try:
            value = int(raw) if isinstance(raw, int | str) else None
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise BadValue(f"must be an integer between {lo} and {hi}{fix}")
        return value

    return parse


def optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def wrapped(raw: Any) -> Any:
        return None if raw is None or raw in {"", "null"} else parse(raw)

    return wrapped


def scheduling(raw: Any) -> str | None:
    """The ``scheduling`` key, checked as the Lambdas parse it (``stacks/tenancy_config.py``), as
    normalized JSON."""
    if raw is None or raw in ("", "null"):
        return None
    try:
        return str(scheduling_context(raw).to_json())
    except ValueError as err:
        raise BadValue(str(err)) from err


def as_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise BadValue("must be true or false")


def one_of(choices: tuple[Any, ...], fix: str = "") -> Callable[[Any], Any]:
    def parse(raw: Any) -> Any:
        value = int(raw) if isinstance(raw, str) and raw.isdigit() else raw
        if isinstance(value, bool) or value not in choices:
            raise BadValue(f"must be one of {', '.join(map(str, choices))}{fix}")
        return value

    return parse


def matching(pattern: re.Pattern[str], what: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        if not isinstance(raw, str) or not pattern.match(raw):
            raise BadValue(f"must be {what}")
        return raw

    return parse


def bucket_arns(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):  # -c dataset_bucket_arns='["arn:aws:s3:::a"]'
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            raise BadValue("must be a JSON list of S3 bucket ARNs like arn:aws:s3:::my-datasets") from err
    if not isinstance(raw, list) or not all(isinstance(a, str) and _S3_BUCKET_ARN.match(a) for a in raw):
        raise BadValue(
            "must be a list of S3 bucket ARNs like arn:aws:s3:::my-datasets (bucket, not object, ARNs)"
        )
    return tuple(dict.fromkeys(raw))


def tags(raw: Any) -> dict[str, str]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            raise BadValue('must be a JSON object of string tags like {"team": "ml"}') from err
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _TAG_KEY.match(k) and len(v) <= 256
        for k, v in raw.items()
    ):
        raise BadValue(
            'must be an object of string tags like {"team": "ml"} (keys ≤ 128, values ≤ 256 chars)'
        )
    return dict(raw)


def instance_types(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):  # -c fleet_instance_types='["g5.xlarge"]' or g5.xlarge,g6.xlarge
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raw = [t.strip() for t in raw.split(",") if t.strip()]
    fix = ' like ["g5.xlarge", "g6.xlarge"]'
    if not isinstance(raw, list) or not raw or len(raw) > 20 or not all(isinstance(t, str) for t in raw):
        raise BadValue(f"must be a list of 1 to 20 EC2 instance types{fix}")
    bad = [t for t in raw if not _INSTANCE_TYPE.match(t)]
    if bad:
        raise BadValue(f"{', '.join(bad)} is not an EC2 instance type; fix: use names{fix}")
    return tuple(dict.fromkeys(raw))


def _is_pattern(pattern: str) -> bool:
    try:
        trust().AllowList.parse(pattern)
    except trust().AllowListError:
        return False
    return True


def allow_list(raw: Any) -> str | None:
    """``fleet_allow``: module patterns as one comma-separated string or a list, normalized to the
    SHARDQ_ALLOW value; null keeps the default. Unlike other keys, "" is an error, not null: an
    empty allow-list is a worker that may run nothing, which refuses to start."""
    if raw is None or raw == "null":
        return None
    if isinstance(raw, str) and raw.strip().startswith("["):  # -c fleet_allow='["examples.*"]'
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            raise BadValue('must be a JSON list of module patterns like ["mypkg.*"]') from err
    items = [raw] if isinstance(raw, str) else raw
    fix = '; fix: list the packages the image ships, like "mypkg.*" or "examples.*,mypkg.train"'
    if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
        raise BadValue(f"must be module patterns, comma-separated or a list{fix}")
    # The worker's own parser (read by path), one pattern at a time so the error names each.
    bad = [p for p in (q.strip() for v in items for q in v.split(",")) if p and not _is_pattern(p)]
    if bad:
        raise BadValue(
            f"{', '.join(repr(p) for p in bad)} is not a module pattern: 'pkg.*' (a package and "
            f"everything under it), 'pkg.mod' (one module) or '*' (any module), no spaces{fix}"
        )
    allow = trust().AllowList.parse(*items)
    if not allow.patterns:
        raise BadValue(f"must name at least one module pattern (with none, workers run nothing){fix}")
    return str(allow)
