"""JSON Schema of TrainingRequest, generated from the contract's own limits.

``python -m shardq.core.schema`` prints it; ``make schema`` writes
schemas/training-request.schema.json, and a test keeps the checked-in copy equal
to this output. The schema is for editors, consoles and clients; the splitter
validates with ``TrainingRequest.from_dict``, which also checks what JSON Schema
cannot (shard count against dataset size, budget against task count).
"""

from __future__ import annotations

import json
from typing import Any

from shardq.core import contracts as c


def training_request_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a TrainingRequest."""
    positive = {"type": "integer", "minimum": 1}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/shardq/shardq/schemas/training-request.schema.json",
        "title": "shardq TrainingRequest",
        "description": "A training job for the shardq splitter Lambda.",
        "type": "object",
        "additionalProperties": False,
        "required": ["kind", "dataset"],
        "properties": {
            "schema_version": {"const": c.SCHEMA_VERSION},
            "job_id": {
                "type": "string",
                "pattern": c.JOB_ID_RE.pattern,
                "description": "Client token: the same id submitted twice is one job.",
            },
            "kind": {"enum": list(c.KINDS)},
            "dataset": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "uri": {"type": "string", "minLength": 1},
                    "num_samples": {**positive, "maximum": c.MAX_NUM_SAMPLES},
                    "files": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
                },
                "oneOf": [{"required": ["num_samples"]}, {"required": ["files"]}],
            },
            "sharding": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "shard_count": {**positive, "maximum": c.MAX_SHARDS},
                    "shard_size": {**positive, "maximum": c.MAX_NUM_SAMPLES},
                },
                "oneOf": [{"required": ["shard_count"]}, {"required": ["shard_size"]}],
            },
            "rounds": {**positive, "maximum": c.MAX_ROUNDS, "default": 1},
            "model": {
                "type": "object",
                "properties": {"init_uri": {"type": "string", "pattern": "://"}},
            },
            "hyperparameters": {"type": "object"},
            "search_space": {
                "oneOf": [
                    {
                        "type": "object",
                        "minProperties": 1,
                        "additionalProperties": {"type": "array", "minItems": 1},
                    },
                    {"type": "array", "minItems": 1, "items": {"type": "object"}},
                ]
            },
            "objective": {
                "type": "object",
                "additionalProperties": False,
                "required": ["metric"],
                "properties": {
                    "metric": {"type": "string", "minLength": 1},
                    "direction": {"enum": list(c.DIRECTIONS), "default": "minimize"},
                },
            },
            "max_parallel": {**positive, "maximum": c.MAX_PARALLEL, "default": c.DEFAULT_MAX_PARALLEL},
            "max_failed_shards": {"type": "integer", "minimum": 0, "maximum": c.MAX_SHARDS, "default": 0},
            "entrypoint": {
                "type": "string",
                "pattern": c.ENTRYPOINT_RE.pattern,
                "default": c.DEFAULT_ENTRYPOINT,
            },
        },
        "allOf": [
            {
                "if": {"properties": {"kind": {"const": "sweep"}}},
                "then": {"required": ["search_space", "objective"], "not": {"required": ["sharding"]}},
                "else": {
                    "required": ["sharding"],
                    "not": {"anyOf": [{"required": ["search_space"]}, {"required": ["objective"]}]},
                },
            },
        ],
    }


def main() -> None:
    """Print the schema."""
    print(json.dumps(training_request_schema(), indent=2))


if __name__ == "__main__":
    main()
