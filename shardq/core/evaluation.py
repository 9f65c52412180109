"""A ``data_parallel`` job's evaluation dataset: request field ``evaluation`` → reduce task ``eval_dataset``
→ the reduce's ``ctx.eval_dataset``.

The request names the held-out data once (``{"uri": ..., "num_samples"?: ...}``); the splitter plans
it into every reduce task, and the worker hands it to the module's ``evaluate_global`` hook (or its own
``reduce``), which scores the round's new global model on it. Train tasks do not carry it: a client
never sees the server's test set.

Before the field existed the MNIST example read ``hyperparameters.test_uri``; a reduce task without
``eval_dataset`` still falls back to it (deprecated, with a warning), so requests written for it, and
tasks planned before the field, keep their evaluation.

This module imports nothing from the contracts (``shardq.core.request`` imports it): the request's
checker reaches it as a ``Problems`` protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

EVALUATION_FIELDS = ("uri", "num_samples")
# The hyperparameter the MNIST example used before the field existed (deprecated fallback).
LEGACY_HYPERPARAMETER = "test_uri"
DEPRECATION = (
    "hyperparameters.test_uri is deprecated as the evaluation dataset: give the request "
    '"evaluation": {"uri": ...} instead (README, "The training contract")'
)


class Problems(Protocol):
    """What ``check_evaluation`` needs of the request's checker (``validation._Checker``)."""

    def add(self, msg: str) -> None: ...

    def unknown_keys(self, data: dict[str, Any], allowed: tuple[str, ...], prefix: str = "") -> None: ...

    def integer(
        self, data: dict[str, Any], key: str, name: str, lo: int, hi: int, default: int | None = None
    ) -> int | None: ...


@dataclass(frozen=True)
class Evaluation:
    """Where a ``data_parallel`` job's held-out evaluation data is."""

    uri: str
    num_samples: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"uri", "num_samples"?}``, as the request and the reduce task carry it."""
        out: dict[str, Any] = {"uri": self.uri}
        if self.num_samples is not None:
            out["num_samples"] = self.num_samples
        return out


def check_evaluation(c: Problems, data: Mapping[str, Any], kind: str | None, most: int) -> Evaluation | None:
    """Read the request's ``evaluation``; every problem goes to ``c`` named by its field.

    ``most`` is the largest ``num_samples`` a dataset may give (the contract's ``MAX_NUM_SAMPLES``).
    """
    raw = data.get("evaluation")
    if raw is None:
        return None
    if kind != "data_parallel":
        c.add(
            f"evaluation applies to kind 'data_parallel' only (its reduce scores the global model); "
            f"remove it (got kind {kind!r})"
        )
        return None
    if not isinstance(raw, dict):
        c.add(f'evaluation must be a JSON object such as {{"uri": "s3://bucket/test.npz"}}, got {raw!r:.60}')
        return None
    c.unknown_keys(raw, EVALUATION_FIELDS, prefix="evaluation.")
    uri = raw.get("uri")
    if uri is None:
        c.add('evaluation.uri is required: the held-out dataset, e.g. {"uri": "s3://bucket/test.npz"}')
        return None
    if not isinstance(uri, str) or not uri.strip():
        c.add(f"evaluation.uri must be a non-empty string (an s3:// URI or a path), got {uri!r:.60}")
        return None
    num_samples = c.integer(raw, "num_samples", "evaluation.num_samples", 1, most)
    if raw.get("num_samples") is not None and num_samples is None:
        return None
    return Evaluation(uri=uri, num_samples=num_samples)


def eval_dataset_of(
    eval_dataset: Mapping[str, Any] | None, hyperparameters: Mapping[str, Any]
) -> tuple[dict[str, Any] | None, bool]:
    """A reduce task's evaluation dataset, and whether it came from the deprecated fallback.

    The task's ``eval_dataset`` when it has one; else ``{"uri": hyperparameters.test_uri}`` when that
    is a non-empty string (requests written before ``evaluation``); else None.
    """
    if eval_dataset:
        return dict(eval_dataset), False
    legacy = hyperparameters.get(LEGACY_HYPERPARAMETER)
    if isinstance(legacy, str) and legacy.strip():
        return {"uri": legacy}, True
    return None, False


def schema(most: int) -> dict[str, Any]:
    """The field's JSON Schema (``shardq.core.schema``); ``most``: the largest ``num_samples``."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["uri"],
        "description": "data_parallel: the held-out dataset the reduce's evaluate_global hook scores "
        "each round's global model on (ctx.eval_dataset).",
        "properties": {
            "uri": {"type": "string", "minLength": 1},
            "num_samples": {"type": "integer", "minimum": 1, "maximum": most},
        },
    }
