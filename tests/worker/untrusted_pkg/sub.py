"""The module a hostile task names inside ``tests.worker.untrusted_pkg``."""

from __future__ import annotations

from typing import Any


def train(task: Any, ctx: Any) -> dict[str, Any]:
    """Never reached by an allow-list test."""
    return {"num_samples": 1}
