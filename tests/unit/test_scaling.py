"""The fleet's scaling rule (shardq/core/fleet_scaling.json, evaluated by shardq.core.scaling), the
RunnableLanes gauge its Lambda publishes, and `shardq estimate` reusing the rule.

tests/infra/test_fleet.py evaluates the *synthesized* policy with the same evaluator and checks it
takes the same steps, so these cases hold for what is deployed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lambdas.fleet_lanes import publish_lanes
from shardq.cli import main
from shardq.core.engine import Engine
from shardq.core.jobstore import JobStore
from shardq.core.operations import cancel
from shardq.core.scaling import (
    MetricMathError,
    backlog_per_worker,
    desired_workers,
    evaluate,
    fleet_values,
    job_lanes,
    lanes_metric,
    next_desired,
    rule,
    runnable_lanes,
)
from shardq.core.settings import Settings
from shardq.local.cloud import LocalCloud

ROOT = Path(__file__).resolve().parents[2]


# -- the metric-math evaluator ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "values", "expected"),
    [
        ("FILL(a, 0) + FILL(b, 0)", {"a": None, "b": 3}, 3.0),  # a missing datapoint filled
        ("a + b", {"a": None, "b": 3}, None),  # ... and left missing without FILL
        ("MAX([FILL(a, 0), b])", {"a": None, "b": 2}, 2.0),
        ("MIN([a, b * 2])", {"a": 9, "b": 4}, 8.0),
        ("IF(w > 0, x / w, x)", {"w": 0, "x": 5}, 5.0),  # the untaken branch's x / 0 does not count
        ("IF(w > 0, x / w, x)", {"w": 4, "x": 6}, 1.5),
        ("IF(w < 1, x, 0)", {"w": 1, "x": 6}, 0.0),
        ("(a - b) * 2 / 4", {"a": 5, "b": 1}, 2.0),
        ("-a + 1", {"a": 3}, -2.0),
    ],
)
def test_evaluate_metric_math(
    expression: str, values: dict[str, float | None], expected: float | None
) -> None:
    assert evaluate(expression, values) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("SEARCH('x', 'Average', 60)", "cannot tokenize"),
        ("RATE(a)", "RATE is not in the subset"),
        ("a +", "expected more"),
        ("a b", "unexpected 'b'"),
        ("nope + 1", "no value for 'nope'"),
    ],
)
def test_evaluate_refuses_what_it_does_not_implement(expression: str, message: str) -> None:
    with pytest.raises(MetricMathError, match=message):
        evaluate(expression, {"a": 1.0})


def test_the_rule_file_is_complete_and_each_expression_uses_only_what_precedes_it() -> None:
    data = rule()
    assert list(data["expressions"])[-2:] == ["perworker", "wake"]
    assert lanes_metric() == ("shardq/Fleet", "RunnableLanes", "JobTable")
    known = {**data["inputs"], **data["constants"]}
    for name, expression in data["expressions"].items():
        evaluate(expression, dict.fromkeys(known, 1.0))  # every name it uses is defined above it
        known[name] = expression


# -- the rule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("visible", "in_flight", "workers", "expected"),
    [
        (10, 2, 4, 3.0),  # 12 tasks over 4 workers
        (5, 0, 0, 5.0),  # no worker yet: the runnable tasks themselves (what wakes the fleet)
        (0, 0, 0, 0.0),  # idle
        (0, 3, 3, 1.0),  # the last wave: every worker holds one shard
        (-1, 0, 2, 0.0),  # CloudWatch never reports negatives; clamp anyway
    ],
)
def test_backlog_per_worker(visible: float, in_flight: float, workers: float, expected: float) -> None:
    assert backlog_per_worker(visible, in_flight, workers) == expected


def test_runnable_per_worker_counts_only_what_the_lanes_can_feed() -> None:
    # GIVEN 40 tasks queued for one job with 4 lanes, and 8 workers
    # THEN only 4 tasks can run: half a task per worker, not five
    assert backlog_per_worker(36, 4, 8, lanes=4) == 0.5
    assert backlog_per_worker(36, 4, 8) == 5.0


@pytest.mark.parametrize(
    ("visible", "in_flight", "target", "max_workers", "lanes", "expected"),
    [
        (0, 0, 1, 8, None, 0),  # empty queue: zero workers
        (1, 0, 1, 8, None, 1),
        (7, 1, 1, 8, None, 8),
        (100, 0, 1, 8, None, 8),  # capped at fleet_max_workers
        (9, 0, 2, 8, None, 5),  # ceil(9 / 2)
        (0.3, 0, 0.1, 8, None, 3),  # no float noise: 0.3 / 0.1 is 3, not 4
        (64, 0, 4, 100, None, 16),
        (100, 0, 1, 64, 4, 4),  # one job with max_parallel 4: 4 workers, whatever the backlog
        (100, 0, 2, 64, 4, 4),  # the cap is on workers, whatever the target
        (3, 0, 1, 64, 10, 3),  # fewer tasks than lanes: the backlog decides
        (100, 0, 1, 8, 50, 8),  # more lanes than max_workers: max_workers decides
        (5, 0, 1, 8, 0, 0),  # no RUNNING job: queued tasks are leftovers of finished jobs
    ],
)
def test_desired_workers(
    visible: float, in_flight: float, target: float, max_workers: int, lanes: float | None, expected: int
) -> None:
    assert (
        desired_workers(visible, in_flight, target=target, max_workers=max_workers, lanes=lanes) == expected
    )


def test_target_tracking_converges_on_desired_workers() -> None:
    # GIVEN 40 tasks, a target of 2 per worker, at most 16 workers, starting from zero
    current = 0
    path = []
    for _ in range(4):
        current = next_desired(current, 40 - current, current, target=2, max_workers=16)
        path.append(current)
    # THEN the wake step lands on the answer and target tracking holds it
    assert path == [16, 16, 16, 16]
    assert desired_workers(40, 0, target=2, max_workers=16) == 16
    # AND a fleet larger than needed shrinks to it in one step
    assert next_desired(10, 4, 0, target=1, max_workers=16) == 4
    # AND an empty queue goes to zero
    assert next_desired(4, 0, 0, target=1, max_workers=16) == 0


def test_a_lane_bound_fleet_wakes_to_the_lanes_and_stays_there() -> None:
    # GIVEN one job of 200 tasks in 6 lanes, target 1, max 32 workers, the fleet at zero
    current, path = 0, []
    for _ in range(3):
        current = next_desired(
            current, 200 - min(current, 6), min(current, 6), target=1, max_workers=32, lanes=6
        )
        path.append(current)
    # THEN it starts the 6 workers the lanes can feed and holds them (no oscillation)
    assert path == [6, 6, 6]
    # AND a fleet grown before the gauge arrived shrinks to the lanes
    assert next_desired(32, 194, 6, target=1, max_workers=32, lanes=6) == 6


def test_every_expression_is_computed_for_a_datapoint() -> None:
    values = fleet_values(10, 2, 3, target=2, max_workers=8, lanes=None)
    assert values["backlog"] == 12
    assert values["runnable"] == 12  # lanes missing: max_workers × target = 16 caps nothing here
    assert values["perworker"] == 4
    assert values["wake"] == 0  # workers run: the wake-up policy stays quiet


def test_bad_targets_are_refused() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        desired_workers(1, 0, target=0, max_workers=1)
    with pytest.raises(ValueError, match="0 or more"):
        desired_workers(1, 0, target=1, max_workers=-1)


# -- the lanes gauge --------------------------------------------------------------------------------


class _Job:
    def __init__(self, phase: str, tasks: int) -> None:
        self.round, self.phase, self.tasks = 0, phase, tasks

    def expected(self, round_no: int, phase: str) -> int:
        return self.tasks if phase == "train" else 1


@pytest.mark.parametrize(
    ("phase", "tasks", "max_parallel", "expected"),
    [
        ("train", 100, 4, 4),  # lanes bound
        ("train", 3, 64, 3),  # fewer tasks than lanes
        ("reduce", 100, 64, 1),  # a reduce is one task
        ("train", 0, 64, 1),  # a RUNNING job always keeps one lane: a retried shard must find a worker
    ],
)
def test_job_lanes(phase: str, tasks: int, max_parallel: int, expected: int) -> None:
    assert job_lanes(_Job(phase, tasks), max_parallel) == expected


def test_runnable_lanes_sums_running_jobs() -> None:
    assert runnable_lanes([(_Job("train", 100), 4), (_Job("reduce", 8), 8), (_Job("train", 2), 64)]) == 7
    assert runnable_lanes([]) == 0


def _request(job_id: str, shards: int, max_parallel: int) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "kind": "map",
        "dataset": {"uri": "synthetic://linear?dim=4", "num_samples": shards * 10},
        "sharding": {"shard_count": shards},
        "max_parallel": max_parallel,
        "entrypoint": "examples.linear:evaluate",
    }


def test_the_lanes_lambda_publishes_the_gauge_of_running_jobs(
    engine: Engine, settings: Settings, cloud: LocalCloud, clients: dict[str, Any]
) -> None:
    # GIVEN two running jobs (12 tasks in 4 lanes; 3 tasks in up to 64 lanes) and a cancelled one
    for job_id, shards, lanes in (("lanes-a", 12, 4), ("lanes-b", 3, 64), ("lanes-c", 20, 8)):
        engine.submit(_request(job_id, shards, lanes))
    cancel(engine, "lanes-c")
    running = {j.job_id for j in JobStore(settings.job_table, clients["dynamodb"]).list_jobs("RUNNING")}
    assert running == {"lanes-a", "lanes-b"}
    cloudwatch = cloud.client("cloudwatch")
    # WHEN the scheduled Lambda runs
    published = publish_lanes(settings.job_table, clients["dynamodb"], cloudwatch)
    # THEN it publishes the lanes those jobs can keep busy, under this table's dimension
    assert published == 4 + 3
    namespace, name, dimension = lanes_metric()
    listed = cloudwatch.list_metrics(Namespace=namespace, MetricName=name)["Metrics"]
    assert {"Name": dimension, "Value": settings.job_table} in [d for m in listed for d in m["Dimensions"]]


def test_estimate_sizes_workers_like_the_fleet(capsys: pytest.CaptureFixture[str]) -> None:
    request = ROOT / "examples" / "requests" / "map.json"
    tasks = 20000 // 2500  # num_samples / shard_size of map.json
    # WHEN estimated with the fleet's settings
    code = main(["estimate", str(request), "--fleet-max-workers", "4", "--backlog-per-worker", "2", "--json"])
    e = json.loads(capsys.readouterr().out)
    # THEN the workers are what the fleet would run
    assert code == 0
    expected = desired_workers(tasks, 0, target=2, max_workers=4)
    assert e["fleet"]["workers"] == expected
    assert (e["fleet"]["max_workers"], e["fleet"]["backlog_per_worker"]) == (4, 2.0)
    assert e["assumptions"]["workers"] == expected
    # AND the table says so
    assert main(["estimate", str(request), "--fleet-max-workers", "4"]) == 0
    assert "fleet: " in capsys.readouterr().out


def test_estimate_caps_the_fleet_at_the_jobs_lanes(capsys: pytest.CaptureFixture[str]) -> None:
    """GIVEN map.json's 8 tasks in 2 lanes WHEN estimated for a fleet of up to 8 THEN 2 workers run."""
    request = ROOT / "examples" / "requests" / "map.json"
    code = main(["estimate", str(request), "--max-parallel", "2", "--fleet-max-workers", "8", "--json"])
    e = json.loads(capsys.readouterr().out)
    assert code == 0
    assert e["fleet"]["workers"] == desired_workers(8, 0, target=1, max_workers=8, lanes=2) == 2
