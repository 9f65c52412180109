"""What checkpoints and heartbeats cost (``shardq estimate --checkpoint-every``)."""

from __future__ import annotations

import pytest

from shardq.core.cost import Assumptions, JobShape, price
from shardq.core.preemption_cost import CheckpointPlan, checkpoint_costs, heartbeat_at_scale, puts_per_save


def test_a_small_checkpoint_is_four_puts_a_large_one_goes_multipart() -> None:
    assert puts_per_save(8) == 1 + 3  # tar, manifest, pointer, prune
    assert puts_per_save(500) == (32 + 2) + 3  # 16 MiB parts, start and complete


def test_checkpoint_requests_and_storage_follow_the_saves() -> None:
    job = JobShape(kind="map", tasks_per_round=100, rounds=1, max_parallel=100)
    c = checkpoint_costs(job, Assumptions(task_seconds=7200), CheckpointPlan(every_seconds=600, size_mib=500))
    assert (c["saves_per_task"], c["saves"]) == (12, 1200)
    assert c["put_requests"] == 1200 * 37 and c["get_requests"] == 100
    assert c["usd"]["puts"] == pytest.approx(1200 * 37 * price("s3_standard_per_thousand_put_requests") / 1e3)
    assert c["total_usd"] == pytest.approx(sum(c["usd"].values()))
    none = checkpoint_costs(
        job, Assumptions(task_seconds=7200), CheckpointPlan(every_seconds=0, size_mib=500)
    )
    assert none["saves"] == none["put_requests"] == 0


def test_heartbeats_at_fleet_scale() -> None:
    h = heartbeat_at_scale(45, slot_hours=1000)
    assert h["calls_per_slot_hour"] == 240 and h["calls"] == 240_000
    assert h["usd"] == pytest.approx(0.12)
