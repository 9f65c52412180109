"""A successive-halving rung's plan in parts that each fit a DynamoDB item.

A closed rung promotes up to half its trials (η = 2), each with its model's URI: 10,000 trials
(``MAX_GATHERED_TASKS``) promote 5,000 ``[trial, URI]`` pairs, ≈ 620 KiB with the default layout's
URIs and up to ≈ 5.5 MB with S3's longest keys, where one item holds 400 KB. The plan is stored
as ``parts`` items of at most ``PART_BYTES`` of JSON each (``JobStore.put_round_plan``); each
part says how many parts there are, so a reader that finds fewer (a plan half written) sees no
plan at all rather than part of one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

# JSON bytes of one part: an item's 400 KB less its keys and attribute names, with room to spare.
PART_BYTES = 300_000

Plan = list[tuple[int, str | None]]


def split_plan(plan: Sequence[tuple[int, str | None]], part_bytes: int = PART_BYTES) -> list[str]:
    """The plan as JSON arrays of ``[trial, model URI]``, in order, each at most ``part_bytes``
    (one part, ``[]``, for an empty plan)."""
    parts: list[str] = []
    entries: list[str] = []
    size = 2  # the brackets
    for trial, uri in plan:
        entry = json.dumps([trial, uri])
        n = len(entry.encode())
        if n + 2 > part_bytes:
            raise ValueError(f"plan entry of trial {trial} is {n} bytes, over {part_bytes}")
        if entries and size + 1 + n > part_bytes:
            parts.append("[" + ",".join(entries) + "]")
            entries, size = [], 2
        size += (1 if entries else 0) + n
        entries.append(entry)
    parts.append("[" + ",".join(entries) + "]")
    return parts


def join_plan(parts: Iterable[tuple[int, int, str]]) -> Plan:
    """The plan of its stored parts ``(index, parts, JSON)`` (any order); empty unless every part
    is there (a plan still being written is no plan yet)."""
    found = {index: (total, text) for index, total, text in parts}
    if sorted(found) != list(range(len(found))) or any(t != len(found) for t, _ in found.values()):
        return []
    return [(int(trial), uri) for i in sorted(found) for trial, uri in json.loads(found[i][1])]


__all__ = ["PART_BYTES", "Plan", "join_plan", "split_plan"]
