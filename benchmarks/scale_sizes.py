"""Sizes for ``benchmarks.scale``: a DynamoDB item's billed size, and a manifest's listed outputs."""

from __future__ import annotations

import base64
import json
from typing import Any

from shardq.core.planning import split_s3


def _number_size(text: str) -> int:
    """A DynamoDB number: about one byte per two significant digits, plus one."""
    digits = text.lstrip("-").replace(".", "").lstrip("0").split("e")[0].split("E")[0] or "0"
    return (len(digits.rstrip("0") or "0") + 1) // 2 + 1


def value_size(value: dict[str, Any]) -> int:
    """The size of one attribute value in the low-level format (``{"S": ...}``, ``{"M": ...}``, ...).

    DynamoDB's documented rules: strings and binaries by their UTF-8 / byte length, numbers by
    their significant digits, ``BOOL`` and ``NULL`` one byte, lists and maps 3 bytes plus one per
    element plus their elements (and, for maps, the keys).
    """
    ((kind, v),) = value.items()
    if kind == "S":
        return len(v.encode())
    if kind == "N":
        return _number_size(v)
    if kind == "B":
        return len(base64.b64decode(v)) if isinstance(v, str) else len(v)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in v)
    if kind == "NS":
        return sum(_number_size(s) for s in v)
    if kind == "BS":
        return sum(len(b) for b in v)
    if kind == "L":
        return 3 + sum(1 + value_size(e) for e in v)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_size(e) for k, e in v.items())
    raise ValueError(f"unknown attribute type {kind}")


def ddb_item_size(item: dict[str, Any]) -> int:
    """An item's size as DynamoDB counts it against the 400 KB limit (names + values)."""
    return sum(len(name.encode()) + value_size(v) for name, v in item.items())


def manifest_outputs(s3: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """Every output a map manifest lists: from its part files (JSON Lines) when it has them, else inline."""
    parts = manifest.get("outputs_parts")
    if parts is None:
        return {"outputs": list(manifest.get("outputs") or []), "parts": 0, "parts_bytes": 0}
    outputs: list[dict[str, Any]] = []
    size = 0
    for part in parts:
        bucket, key = split_s3(part["uri"])
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        size += len(body)
        outputs.extend(json.loads(line) for line in body.decode().splitlines() if line)
    return {"outputs": outputs, "parts": len(parts), "parts_bytes": size}
