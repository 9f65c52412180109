"""Planning properties: exact coverage, lanes, unique ids, grid expansion."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shardq.core import planning
from shardq.core.contracts import TrainingRequest, count_trials
from shardq.core.search import trial
from tests.requests import make_request


@given(num_items=st.integers(1, 5_000_000), data=st.data())
@settings(max_examples=300, deadline=None)
def test_shards_cover_dataset_exactly_once(num_items: int, data: st.DataObject) -> None:
    # GIVEN any dataset size and any legal shard count
    shard_count = data.draw(st.integers(1, min(num_items, 2_000)))
    # WHEN every shard's range is planned
    ranges = [planning.shard_range(num_items, shard_count, i) for i in range(shard_count)]
    # THEN ranges are contiguous, non-empty, cover [0, n) exactly and differ in size by at most one
    assert ranges[0][0] == 0
    assert ranges[-1][1] == num_items
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    sizes = [e - s for s, e in ranges]
    assert min(sizes) >= 1
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == num_items


def _request(**overrides: Any) -> TrainingRequest:
    fields: dict[str, Any] = {"job_id": "job-1", "shards": 10, "num_samples": 1000, "uri": "s3://bucket/data"}
    return TrainingRequest.from_dict(
        make_request(overrides.pop("kind", "data_parallel"), **{**fields, **overrides})
    )


@given(
    num_files=st.integers(1, 300),
    data=st.data(),
    max_parallel=st.integers(1, 50),
)
@settings(max_examples=100, deadline=None)
def test_file_shards_partition_the_file_list_with_lanes_and_unique_dedup_ids(
    num_files: int, data: st.DataObject, max_parallel: int
) -> None:
    # GIVEN a file dataset and a shard count
    files = [f"s3://bucket/part-{i:05d}.parquet" for i in range(num_files)]
    shard_count = data.draw(st.integers(1, num_files))
    request = _request(
        dataset={"files": files}, sharding={"shard_count": shard_count}, max_parallel=max_parallel
    )
    layout = planning.Layout("bucket", "job-1")
    # WHEN every task of round 0 is planned
    tasks = [planning.train_task(request, "job-1", layout, 0, i, None) for i in range(request.task_count)]
    # THEN the files are partitioned in order, lanes stay under max_parallel, ids are unique
    assert [f for t in tasks for f in t.data["files"]] == files
    lanes = {planning.lane(t.shard_id, max_parallel) for t in tasks}
    assert lanes <= set(range(max_parallel))
    assert len(lanes) == min(max_parallel, shard_count)
    assert len({planning.dedup_id(t) for t in tasks}) == len(tasks)
    assert len({t.to_json() for t in tasks}) == len(tasks)
    assert len({t.output_prefix for t in tasks}) == len(tasks)


@given(
    grid=st.dictionaries(
        st.text("abcdefgh", min_size=1, max_size=4),
        st.lists(st.integers(-5, 5) | st.floats(0, 1, allow_nan=False), min_size=1, max_size=4),
        min_size=1,
        max_size=4,
    )
)
@settings(max_examples=200, deadline=None)
def test_grid_expands_to_exact_product_in_itertools_order(grid: dict[str, list[object]]) -> None:
    # GIVEN any grid WHEN trials are decoded one index at a time
    n = count_trials(grid)
    decoded = [trial(grid, i) for i in range(n)]
    # THEN they equal itertools.product's expansion, in order, and their count is the product
    assert decoded == list(planning.expand_grid(grid))
    expected = 1
    for values in grid.values():
        expected *= len(values)
    assert n == expected


def test_sweep_tasks_carry_trial_hyperparameters_over_the_whole_dataset() -> None:
    request = _request(
        kind="sweep",
        sharding=None,
        hyperparameters={"epochs": 2},
        search_space={"lr": [0.1, 0.01], "batch": [16, 32, 64]},
        objective={"metric": "val_loss"},
    )
    layout = planning.Layout("b", "job-1")
    tasks = [planning.train_task(request, "job-1", layout, 0, i, None) for i in range(request.task_count)]
    assert len(tasks) == 6
    assert tasks[0].hyperparameters == {"epochs": 2, "lr": 0.1, "batch": 16}
    assert tasks[5].hyperparameters == {"epochs": 2, "lr": 0.01, "batch": 64}
    assert all(t.data == {"uri": "s3://bucket/data", "start": 0, "end": 1000} for t in tasks)


def test_shard_size_rounds_up_the_last_shard() -> None:
    request = _request(sharding={"shard_size": 300})
    assert request.task_count == 4
    layout = planning.Layout("b", "job-1")
    last = planning.train_task(request, "job-1", layout, 0, 3, None)
    assert last.data["end"] == 1000


def test_reduce_task_points_at_its_claim_check() -> None:
    request = _request(rounds=2)
    task = planning.reduce_task(request, "job-1", planning.Layout("b", "job-1"), 1)
    assert task.task_type == "reduce"
    assert task.inputs_uri == "s3://b/jobs/job-1/round-0001/reduce-inputs.json"
    assert task.key == "job-1:1:0:reduce"
