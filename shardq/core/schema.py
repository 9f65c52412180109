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

from shardq.core import budgets, evaluation, fedbuff_params, pipeline_fields, tenancy
from shardq.core import contracts as c
from shardq.core.optuna_search import DEFAULT_SAMPLER, MAX_OPTUNA_TRIALS, SAMPLERS
from shardq.core.request_fields import PROMOTION_RULES


def _distributions() -> list[dict[str, Any]]:
    pair = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
    return [
        {"type": "object", "additionalProperties": False, "required": [d], "properties": {d: pair}}
        for d in c.DISTRIBUTIONS
    ]


def _strategy_schema() -> dict[str, Any]:
    """One branch per server strategy, each with its parameters and their defaults."""
    branches = []
    for name, params in c.STRATEGIES.items():
        properties: dict[str, Any] = {"name": {"const": name}}
        for key, default in params.items():
            low, high, low_open, high_open = c.STRATEGY_RANGES[key]
            properties[key] = {
                "type": "number",
                "exclusiveMinimum" if low_open else "minimum": low,
                "exclusiveMaximum" if high_open else "maximum": high,
                "default": default,
            }
        if name == "fedbuff":  # its staleness function and calibration are names, not numbers
            for key, (allowed, chosen) in fedbuff_params.CHOICES.items():
                properties[key] = {"enum": list(allowed), "default": chosen}
            for key in fedbuff_params.INTEGERS:
                properties[key]["type"] = "integer"
        branch: dict[str, Any] = {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": properties,
        }
        if name == "fedbuff":  # a parameter only a choice uses needs that choice
            branch["allOf"] = [
                {
                    "if": {"required": [key]},
                    "then": {"required": [choice], "properties": {choice: {"enum": list(using)}}},
                }
                for key, (choice, using) in fedbuff_params.NEEDS.items()
            ]
        branches.append(branch)
    return {"description": "data_parallel: the reduce step's server strategy.", "oneOf": branches}


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
                        "additionalProperties": {
                            "oneOf": [{"type": "array", "minItems": 1}, *_distributions()],
                        },
                    },
                    {"type": "array", "minItems": 1, "items": {"type": "object"}},
                ],
                "description": "A grid (name → list of values; with search.method 'random' or 'optuna' also "
                "name → {uniform|log_uniform|int_uniform: [low, high]}) or a list of trials.",
            },
            "search": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "method": {"enum": list(c.SEARCH_METHODS), "default": "grid"},
                    "num_trials": {**positive, "maximum": c.MAX_GATHERED_TASKS},
                    "seed": {"type": "integer", "minimum": 0, "default": 0},
                    "sampler": {
                        "enum": list(SAMPLERS),
                        "default": DEFAULT_SAMPLER,
                        "description": "method 'optuna' only: the Optuna sampler that asks each trial "
                        f"(at most {MAX_OPTUNA_TRIALS} trials).",
                    },
                },
            },
            "early_stopping": {
                "type": "object",
                "additionalProperties": False,
                "description": "Successive halving: rung k trains min_budget·eta^k; the best 1/eta go on.",
                "properties": {
                    "method": {"enum": list(c.EARLY_STOPPING_METHODS), "default": "successive_halving"},
                    "eta": {"type": "integer", "minimum": 2, "maximum": 100, "default": 3},
                    "min_budget": {**positive, "default": 1},
                    "max_budget": {**positive, "default": 9},
                    "budget_param": {"type": "string", "minLength": 1, "default": "epochs"},
                    "promotion": {
                        "enum": list(PROMOTION_RULES),
                        "default": "paper",
                        "description": "method 'asha' only: 'paper' promotes the top 1/eta of a rung's "
                        "results so far; 'eager' also its best while it has fewer than eta "
                        "(as Optuna's SuccessiveHalvingPruner and Ray Tune's ASHAScheduler).",
                    },
                },
            },
            "participation": {
                "type": "object",
                "additionalProperties": False,
                "description": "data_parallel: a seeded sample of shards trains each round.",
                "properties": {
                    "fraction": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 1},
                    "min_shards": {**positive, "default": 1},
                    "seed": {"type": "integer", "minimum": 0, "default": 0},
                },
            },
            "quorum": {
                "type": "object",
                "additionalProperties": False,
                "description": "data_parallel: a round closes at this share of successes or its deadline.",
                "properties": {
                    "fraction": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 1},
                    "deadline_seconds": {**positive, "maximum": c.MAX_ROUND_DEADLINE_S},
                },
            },
            "strategy": _strategy_schema(),
            "evaluation": evaluation.schema(c.MAX_NUM_SAMPLES),
            "task_timeout_seconds": {**positive, "maximum": c.MAX_TASK_TIMEOUT_S},
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
            **tenancy.request_schema(),
            **pipeline_fields.request_schema(),
            "budget_usd": budgets.schema(),
        },
        "allOf": [
            {
                "if": {"properties": {"kind": {"const": "sweep"}}},
                "then": {"required": ["search_space", "objective"], "not": {"required": ["sharding"]}},
                "else": {
                    "required": ["sharding"],
                    "not": {
                        "anyOf": [
                            {"required": [key]}
                            for key in ("search_space", "objective", "search", "early_stopping")
                        ]
                    },
                },
            },
            {
                "if": {"properties": {"kind": {"const": "data_parallel"}}},
                # One reduce gathers every shard's model each round (contracts.MAX_GATHERED_TASKS).
                "then": {
                    "properties": {
                        "sharding": {"properties": {"shard_count": {"maximum": c.MAX_GATHERED_TASKS}}}
                    }
                },
                "else": {
                    "not": {
                        "anyOf": [
                            {"required": [key]}
                            for key in ("participation", "quorum", "strategy", "evaluation")
                        ]
                    }
                },
            },
        ],
    }


def main() -> None:
    """Print the schema."""
    print(json.dumps(training_request_schema(), indent=2))


if __name__ == "__main__":
    main()
