"""JSON objects the coordination plane keeps in the artifact bucket (claim checks, manifests)."""

from __future__ import annotations

import json
from typing import Any

from shardq.core.contracts import finite_or_name


def standard(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its name (``"nan"``, ``"inf"``, ``"-inf"``).

    What shardq writes for people and other programs (manifests, ``--json``, the dashboard's API)
    is standard JSON, which has no NaN or Infinity: Python would write the non-standard tokens,
    which ``JSON.parse`` and most other parsers refuse. A diverged trial's metrics are the
    expected case (``shardq.core.verdicts``); anything else that slips through is shown the same
    way instead of failing the write (and with it the job's finalize).
    """
    if isinstance(value, float):
        return finite_or_name(value)
    if isinstance(value, dict):
        return {k: standard(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [standard(v) for v in value]
    return value


def dumps_standard(data: Any, **options: Any) -> str:
    """``json.dumps`` of ``standard(data)``, refusing NaN and Infinity (``allow_nan=False``)."""
    return json.dumps(standard(data), allow_nan=False, **options)


def put_json(s3: Any, bucket: str, key: str, data: dict[str, Any]) -> None:
    """Write ``data`` as indented, key-sorted, standard JSON (deterministic: racing writers agree)."""
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=dumps_standard(data, indent=2, sort_keys=True, default=str).encode(),
        ContentType="application/json",
    )
