"""JSON objects the coordination plane keeps in the artifact bucket (claim checks, manifests)."""

from __future__ import annotations

import json
from typing import Any


def put_json(s3: Any, bucket: str, key: str, data: dict[str, Any]) -> None:
    """Write ``data`` as indented, key-sorted JSON (deterministic: racing writers agree)."""
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=json.dumps(data, indent=2, sort_keys=True, default=str).encode(),
        ContentType="application/json",
    )
