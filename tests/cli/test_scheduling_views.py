"""Tenant, priority and window in every read view, and a quota breach at ``shardq submit`` (issue #25).

A windowed job running on the local cloud (no workers: its window stays full), read with
``status`` (human and --json), ``list`` (human and --json), ``watch`` (one JSON frame) and the
dashboard's job row.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from shardq.cli.scheduling_view import scheduling_text, watch_suffix
from shardq.core.engine import Engine
from shardq.core.settings import Settings
from shardq.dashboard.data import job_row
from tests.cli.conftest import Shardq

SCHEDULING = {
    "window_per_lane": 2,
    "tenants": {"default": {}, "vision": {"weight": 2, "quotas": {"running_jobs": 1}}},
}


@pytest.fixture
def scheduled(outputs: dict[str, str], settings: Settings) -> Settings:
    """The CLI's outputs with the stack's Scheduling output (what a deployed stack writes)."""
    path = Path(os.environ["SHARDQ_OUTPUTS_JSON"])
    path.write_text(json.dumps({**outputs, "Scheduling": json.dumps(SCHEDULING)}))
    return Settings.from_outputs({**outputs, "Scheduling": json.dumps(SCHEDULING)})


def request(job_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "kind": "map",
        "dataset": {"num_samples": 400},
        "sharding": {"shard_count": 40},
        "max_parallel": 4,
        **fields,
    }


def test_every_view_shows_tenant_priority_and_window(
    scheduled: Settings, shardq: Shardq, write_request: Any, clients: dict[str, Any]
) -> None:
    # GIVEN a windowed job of tenant vision at priority 900, submitted through the CLI
    run = shardq("submit", "--direct", write_request(request("v1", tenant="vision", priority=900)))
    assert run.code == 0, run.err
    # THEN status --json carries the fields, with the window (its first: 1 per lane × 4 lanes) full
    data = shardq("status", "v1", "--json").json()
    assert (data["tenant"], data["priority"], data["queued"], data["window"]) == ("vision", 900, 4, 4)
    assert data["enqueuing"] is None  # the unsent 36 wait by design, not a fan-out that died
    # AND the human status says it in one line
    human = shardq("status", "v1").out
    assert "vision · priority 900 · 4 queued or running of a window of 4" in human
    assert scheduling_text(data) in human
    # AND list shows tenant and priority columns
    listed = shardq("list").out
    assert "TENANT" in listed and "PRIORITY" in listed
    row = next(line for line in listed.splitlines() if line.startswith("v1"))
    assert "vision" in row and "900" in row
    listed_json = shardq("list", "--json").json()
    assert {(v["job_id"], v["tenant"], v["priority"], v["window"]) for v in listed_json} == {
        ("v1", "vision", 900, 4)
    }
    # AND a watch frame carries them too
    frame = shardq("watch", "v1", "--json", "--timeout", "1")
    event = json.loads(frame.out.splitlines()[0])
    assert (event["tenant"], event["priority"], event["queued"], event["window"]) == ("vision", 900, 4, 4)
    assert watch_suffix(event) == " · window 4/4"
    # AND the dashboard's job row (its API) serves the same fields
    engine = Engine(
        settings=scheduled,
        ddb=clients["dynamodb"],
        sqs=clients["sqs"],
        s3=clients["s3"],
        events=clients["events"],
    )
    row_api = job_row(engine.store.get_job("v1"), 0.0)
    assert (row_api["tenant"], row_api["priority"], row_api["queued"], row_api["window"]) == (
        "vision",
        900,
        4,
        4,
    )


def test_a_submit_over_quota_exits_2_naming_the_quota_and_creates_nothing(
    scheduled: Settings, shardq: Shardq, write_request: Any
) -> None:
    assert shardq("submit", "--direct", write_request(request("q1", tenant="vision"))).code == 0
    run = shardq("submit", "--direct", write_request(request("q2", tenant="vision"), "second.json"))
    assert run.code == 2
    assert "quota running_jobs of tenant 'vision' is 1: 1 job(s) running now" in run.err
    assert shardq("status", "q2").code == 3  # not found: nothing was created


def test_a_priority_out_of_range_is_refused_before_anything_is_sent(
    shardq: Shardq, write_request: Any
) -> None:
    run = shardq("submit", "--direct", write_request(request("p1", priority=5000)))
    assert run.code == 2
    assert "priority must be an integer from 0 to 1000" in run.err and "nothing was submitted" in run.err
