"""The fleet's scaling arithmetic (shardq.core.scaling), and `shardq estimate` reusing it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardq.cli import main
from shardq.core.scaling import backlog_per_worker, desired_workers, next_desired

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("visible", "in_flight", "workers", "expected"),
    [
        (10, 2, 4, 3.0),  # 12 tasks over 4 workers
        (5, 0, 0, 5.0),  # no worker yet: the backlog itself (what wakes the fleet)
        (0, 0, 0, 0.0),  # idle
        (0, 3, 3, 1.0),  # the last wave: every worker holds one shard
        (-1, 0, 2, 0.0),  # CloudWatch never reports negatives; clamp anyway
    ],
)
def test_backlog_per_worker(visible: float, in_flight: float, workers: float, expected: float) -> None:
    assert backlog_per_worker(visible, in_flight, workers) == expected


@pytest.mark.parametrize(
    ("visible", "in_flight", "target", "max_workers", "expected"),
    [
        (0, 0, 1, 8, 0),  # empty queue: zero workers
        (1, 0, 1, 8, 1),
        (7, 1, 1, 8, 8),
        (100, 0, 1, 8, 8),  # capped at fleet_max_workers
        (9, 0, 2, 8, 5),  # ceil(9 / 2)
        (0.3, 0, 0.1, 8, 3),  # no float noise: 0.3 / 0.1 is 3, not 4
        (64, 0, 4, 100, 16),
    ],
)
def test_desired_workers(
    visible: float, in_flight: float, target: float, max_workers: int, expected: int
) -> None:
    assert desired_workers(visible, in_flight, target=target, max_workers=max_workers) == expected


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


def test_bad_targets_are_refused() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        desired_workers(1, 0, target=0, max_workers=1)
    with pytest.raises(ValueError, match="0 or more"):
        desired_workers(1, 0, target=1, max_workers=-1)


def test_estimate_sizes_workers_like_the_fleet(capsys: pytest.CaptureFixture[str]) -> None:
    request = ROOT / "examples" / "requests" / "map.json"
    tasks = 20000 // 2500  # num_samples / shard_size of map.json
    # WHEN estimated with the fleet's settings
    code = main(["estimate", str(request), "--fleet-max-workers", "4", "--backlog-per-worker", "2", "--json"])
    e = json.loads(capsys.readouterr().out)
    # THEN the workers are what the fleet would run
    assert code == 0
    expected = desired_workers(tasks, 0, target=2, max_workers=4)
    assert e["fleet"] == {"max_workers": 4, "backlog_per_worker": 2.0, "workers": expected}
    assert e["assumptions"]["workers"] == expected
    # AND the table says so
    assert main(["estimate", str(request), "--fleet-max-workers", "4"]) == 0
    assert "fleet: " in capsys.readouterr().out
