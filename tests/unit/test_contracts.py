"""Contracts: every problem named with its field, value and fix; schema in step with the model."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from shardq.core.contracts import ShardResult, ShardTask, TrainingRequest, ValidationError
from shardq.core.schema import training_request_schema

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "requests").glob("*.json"))
VALID = {
    "kind": "data_parallel",
    "dataset": {"uri": "s3://b/d", "num_samples": 100},
    "sharding": {"shard_count": 4},
}

SWEEP = {
    "kind": "sweep",
    "dataset": {"uri": "s3://b/d", "num_samples": 100},
    "search_space": {"lr": {"log_uniform": [1e-4, 1e-1]}},
    "search": {"method": "random", "num_trials": 8},
    "objective": {"metric": "val_loss"},
}


def problems(payload: dict[str, object]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        TrainingRequest.from_dict(payload)
    return info.value.problems


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"sharding": {"shard_count": 0}}, "sharding.shard_count must be between 1 and 1000000, got 0"),
        ({"sharding": {"shard_count": 200}}, "sharding.shard_count (200) exceeds dataset.num_samples (100)"),
        ({"sharding": {"shard_count": 2, "shard_size": 5}}, "either shard_count or shard_size, not both"),
        ({"sharding": {"shard_count": "4"}}, "sharding.shard_count must be an integer"),
        ({"sharding": {"shard_count": True}}, "sharding.shard_count must be an integer"),
        ({"kind": "train"}, "kind must be one of data_parallel, sweep, map, got 'train'"),
        ({"rounds": 0}, "rounds must be between 1 and 1000, got 0"),
        ({"kind": "map", "rounds": 3}, "rounds applies to kind 'data_parallel' only"),
        ({"job_id": "has space"}, "job_id must be 1-64 letters"),
        ({"entrypoint": "no_colon"}, "entrypoint must look like 'package.module:function'"),
        ({"dataset": {"uri": "s3://b/d"}}, "dataset needs num_samples (with uri) or files"),
        ({"dataset": {"num_samples": 10, "files": ["a"]}}, "dataset takes either num_samples or files"),
        ({"search_space": {"lr": [1]}}, "search_space applies to kind 'sweep' only"),
        ({"max_failed_shards": 5}, "max_failed_shards must be at most the number of tasks (4), got 5"),
        ({"model": {"init_uri": "model.pt"}}, "model.init_uri must be a URI"),
        ({"schema_version": 2}, "schema_version must be 1, got 2"),
    ],
)
def test_bad_field_is_named_with_value_and_fix(patch: dict[str, object], expected: str) -> None:
    assert any(expected in p for p in problems({**VALID, **patch}))


def test_unknown_field_suggests_the_close_match() -> None:
    found = problems({**VALID, "shardng": {"shard_count": 2}})
    assert any("unknown field 'shardng': did you mean 'sharding'?" in p for p in found)


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        (
            {"kind": "data_paralel"},
            "kind must be one of data_parallel, sweep, map, got 'data_paralel': "
            "did you mean 'data_parallel'?",
        ),
        (
            {
                "kind": "sweep",
                "search_space": {"lr": [1]},
                "objective": {"metric": "loss", "direction": "minimise"},
            },
            "objective.direction must be one of minimize, maximize, got 'minimise': did you mean 'minimize'?",
        ),
        (
            {"kind": 7},
            "kind must be one of data_parallel, sweep, map, got 7: allowed: data_parallel, sweep, map",
        ),
    ],
)
def test_a_mistyped_enum_value_suggests_the_close_match(patch: dict[str, object], expected: str) -> None:
    assert any(expected in p for p in problems({**VALID, **patch}))


def test_every_problem_is_reported_at_once() -> None:
    found = problems({"kind": "sweep", "dataset": {"num_samples": 0}, "max_parallel": 0})
    joined = "\n".join(found)
    assert "dataset.num_samples must be between 1" in joined
    assert "search_space is required for kind 'sweep'" in joined
    assert "objective is required for kind 'sweep'" in joined
    assert "max_parallel must be between 1 and 10000, got 0" in joined
    assert len(found) == 4


def test_error_message_lists_problems() -> None:
    with pytest.raises(ValidationError, match=r"invalid TrainingRequest \(1 problem\):\n  - rounds"):
        TrainingRequest.from_dict({**VALID, "rounds": -1})


def test_body_that_is_not_json_is_rejected_clearly() -> None:
    with pytest.raises(ValidationError, match="not valid JSON"):
        TrainingRequest.from_json("{nope")
    with pytest.raises(ValidationError, match="must be a JSON object"):
        ShardResult.from_json("[1, 2]")


def test_a_map_round_takes_a_million_shards_a_gathered_round_ten_thousand() -> None:
    # GIVEN the per-kind caps: a map round closes in ranges, a data_parallel or sweep round at once
    big = {"uri": "s3://b/d", "num_samples": 10**7}
    # THEN a map job of 1,000,000 shards is valid (model and schema) and 1,000,001 is not
    million = {"kind": "map", "dataset": big, "sharding": {"shard_count": 1_000_000}}
    assert TrainingRequest.from_dict(million).task_count == 1_000_000
    jsonschema.validate(million, training_request_schema())
    assert any(
        "sharding.shard_count must be between 1 and 1000000, got 1000001" in p
        for p in problems({**million, "sharding": {"shard_count": 1_000_001}})
    )
    # AND a data_parallel job stops at 10,000 shards, by count or by size, naming the fix
    dp = {**VALID, "dataset": big, "sharding": {"shard_count": 10_000}}
    assert TrainingRequest.from_dict(dp).task_count == 10_000
    jsonschema.validate(dp, training_request_schema())
    (found,) = problems({**dp, "sharding": {"shard_count": 10_001}})
    assert "sharding.shard_count 10001 is over 10,000 for kind 'data_parallel'" in found
    assert "give at most 10,000 (larger) shards, or use kind 'map'" in found
    (found,) = problems({**dp, "sharding": {"shard_size": 999}})
    assert found == (
        "sharding.shard_size 999 gives 10011 shards, over 10,000 for kind 'data_parallel'; "
        "raise shard_size to at least 1000"
    )
    assert TrainingRequest.from_dict({**dp, "sharding": {"shard_size": 1000}}).task_count == 10_000
    # AND a sweep stops at 10,000 trials, sampled or from a grid
    assert TrainingRequest.from_dict({**SWEEP, "search": {"method": "random", "num_trials": 10_000}})
    assert any(
        "search.num_trials must be between 1 and 10000, got 10001" in p
        for p in problems({**SWEEP, "search": {"method": "random", "num_trials": 10_001}})
    )
    grid = {**SWEEP, "search_space": {"a": list(range(101)), "b": list(range(100))}}
    del grid["search"]
    assert any(
        "search_space expands to 10100 trials, over 10,000; shrink the grid" in p for p in problems(grid)
    )


def test_request_round_trips_through_json() -> None:
    request = TrainingRequest.from_dict({**VALID, "job_id": "abc", "hyperparameters": {"lr": 0.1}})
    assert TrainingRequest.from_json(request.to_json()) == request


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_requests_are_valid_for_model_and_schema(path: Path) -> None:
    payload = json.loads(path.read_text())
    TrainingRequest.from_dict(payload)
    jsonschema.validate(payload, training_request_schema())


def test_checked_in_schema_is_generated_from_the_model() -> None:
    checked_in = json.loads((ROOT / "schemas" / "training-request.schema.json").read_text())
    assert checked_in == training_request_schema(), "run `make schema` and commit the result"


@pytest.mark.parametrize(
    "payload",
    [
        {**VALID, "kind": "sweep"},
        {**VALID, "sharding": {"shard_count": 0}},
        {**VALID, "surprise": 1},
        {"kind": "map", "dataset": {"num_samples": 5}},
        {**VALID, "dataset": {"uri": "s3://b/d", "num_samples": 10**6}, "sharding": {"shard_count": 10_001}},
        {**SWEEP, "search": {"method": "random", "num_trials": 10_001}},
    ],
)
def test_schema_rejects_what_the_model_rejects(payload: dict[str, object]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(payload, training_request_schema())
    with pytest.raises(ValidationError):
        TrainingRequest.from_dict(payload)


def test_result_validation_names_fields() -> None:
    with pytest.raises(ValidationError) as info:
        ShardResult.from_json(
            {
                "job_id": "j",
                "round": -1,
                "shard_id": 0,
                "task_type": "train",
                "status": "ok",
                "metrics": {"a": "x"},
            }
        )
    joined = "\n".join(info.value.problems)
    assert "round must be between 0 and 1000, got -1" in joined
    assert "status must be 'succeeded', 'failed' or 'diverged', got 'ok'" in joined
    assert "metrics.a must be a number (non-finite as NaN, Infinity or the strings" in joined


def test_task_and_result_bodies_are_deterministic() -> None:
    task = ShardTask(
        job_id="j",
        round=0,
        shard_id=1,
        shard_count=2,
        task_type="train",
        kind="map",
        entrypoint="m:f",
        data={"start": 0, "end": 5},
        hyperparameters={"b": 1, "a": 2},
        output_prefix="s3://b/p/",
    )
    assert task.to_json() == ShardTask.from_json(task.to_json()).to_json()
    assert task.to_json().index('"a"') < task.to_json().index('"b"')
