"""The results route rule (shardq.core.result_routes) and the latency model that counts by it."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from shardq.core import latency
from shardq.core.result_routes import FAST_ROUTE_MAX_TASKS, OFF, results_queue_for, route_of


@dataclass
class T:
    task_type: str
    shard_count: int


def test_reduce_results_always_take_the_fast_path() -> None:
    for shards in (1, FAST_ROUTE_MAX_TASKS, FAST_ROUTE_MAX_TASKS + 1, 10_000):
        assert route_of(T("reduce", shards)) == "fast"


def test_train_results_take_the_fast_path_only_in_rounds_small_enough_that_any_may_close_them() -> None:
    assert route_of(T("train", 1)) == "fast"
    assert route_of(T("train", FAST_ROUTE_MAX_TASKS)) == "fast"
    assert route_of(T("train", FAST_ROUTE_MAX_TASKS + 1)) == "bulk"


def test_no_fast_queue_or_off_or_an_unreadable_task_sends_to_the_bulk_queue() -> None:
    small = T("train", 2)
    assert results_queue_for(small, "bulk", "fast") == "fast"
    assert results_queue_for(small, "bulk", None) == "bulk"
    assert results_queue_for(small, "bulk", OFF) == "bulk"
    assert results_queue_for(None, "bulk", "fast") == "bulk"
    assert results_queue_for(T("train", FAST_ROUTE_MAX_TASKS + 1), "bulk", "fast") == "bulk"


# -- the latency model ---------------------------------------------------------------------------


DEFAULTS = latency.paths_from_context({"results_batch_window_seconds": 5})


def test_at_the_defaults_a_round_meets_the_targets_and_was_about_ten_seconds_before() -> None:
    r = latency.report(DEFAULTS, 2)
    assert r["after"]["routes"] == {"train": "fast", "reduce": "fast"}
    assert r["after"]["p50_s"] <= 0.5 and r["after"]["p99_s"] <= 3.0
    assert r["after"]["p99_bound_s"] <= 3.0  # even every hop at its p99 at once
    assert r["before"]["routes"] == {"train": "bulk", "reduce": "bulk"}
    assert 10.0 <= r["before"]["p50_s"] <= 10.5  # two 5 s windows on the critical path


def test_the_window_is_read_from_the_settings_and_only_the_bulk_path_pays_it() -> None:
    slow = latency.paths_from_context({"results_batch_window_seconds": 60})
    small, big = latency.report(slow, 2), latency.report(slow, FAST_ROUTE_MAX_TASKS + 1)
    assert small["after"]["p50_s"] == latency.report(DEFAULTS, 2)["after"]["p50_s"]  # no window at all
    assert 120 <= small["before"]["p50_s"] < 121
    # A big round's last train result waits out one window; its reduce's result does not.
    assert big["after"]["routes"] == {"train": "bulk", "reduce": "fast"}
    assert 60 <= big["after"]["p50_s"] < 61


def test_the_model_reads_the_synthesized_event_source_mappings() -> None:
    def mapping(queue: str, batch: int, window: int | None) -> dict[str, object]:
        props: dict[str, object] = {"EventSourceArn": {"Fn::GetAtt": [queue, "Arn"]}, "BatchSize": batch}
        if window is not None:
            props["MaximumBatchingWindowInSeconds"] = window
        return {"Type": "AWS::Lambda::EventSourceMapping", "Properties": props}

    template = {
        "Resources": {"A": mapping("ResultsQueue", 100, 7), "B": mapping("FastResultsQueue", 10, None)}
    }
    paths = latency.paths_from_template(template)
    assert (paths.bulk.batch_size, paths.bulk.window_s) == (100, 7.0)
    assert paths.fast is not None and (paths.fast.batch_size, paths.fast.window_s) == (10, 0.0)
    # A template from before the fast queue: everything on the bulk path, before == after.
    old = latency.paths_from_template({"Resources": {"A": mapping("ResultsQueue", 100, 7)}})
    r = latency.report(old, 2)
    assert r["after"]["p50_s"] == r["before"]["p50_s"] >= 14
    with pytest.raises(ValueError, match="no event source mapping on ResultsQueue"):
        latency.paths_from_template({"Resources": {}})


def test_the_model_is_deterministic_and_its_p99_is_below_the_sum_of_p99s() -> None:
    a, b = latency.round_latency(DEFAULTS, 2), latency.round_latency(DEFAULTS, 2)
    assert json.dumps(a) == json.dumps(b)
    assert a["p50_s"] < a["p99_s"] <= a["p99_bound_s"]


def test_the_fast_path_costs_more_per_result_only_when_results_come_in_floods() -> None:
    c = latency.cost_per_result(DEFAULTS, FAST_ROUTE_MAX_TASKS)
    # A flood: 100 results per bulk invocation, 10 per fast one.
    assert c["bulk"]["full"]["invocations_per_result"] == 0.01
    assert c["fast"]["full"]["invocations_per_result"] == 0.1
    assert c["fast"]["full"]["write_units_per_result"] > c["bulk"]["full"]["write_units_per_result"]
    # A result alone in its batch costs the same on either path.
    assert c["fast"]["alone"] == c["bulk"]["alone"]
