"""The pipeline checker of the model-based test (tests/chaos/model_pipeline.py) sees what it is
there to see: a lost event, a start before the upstream job succeeded, an unnamed failure."""

from __future__ import annotations

from typing import Any

import pytest

from shardq.core.operations import cancel
from tests.chaos.model_pipeline import Pipelines
from tests.chaos.model_world import World
from tests.requests import make_request

pytestmark = pytest.mark.local_cloud


@pytest.fixture
def world(clients: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> World:
    from lambdas import pipeline

    w = World.create(clients)
    monkeypatch.setattr(pipeline, "engine", lambda: w.engine)
    return w


def _set(world: World, job_id: str, **values: str) -> None:
    world.clients["dynamodb"].update_item(
        TableName=world.settings.job_table,
        Key={"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": "JOB"}},
        UpdateExpression="SET " + ", ".join(f"#{k} = :{k}" for k in values),
        ExpressionAttributeNames={f"#{k}": k for k in values},
        ExpressionAttributeValues={f":{k}": {"S": v} for k, v in values.items()},
    )


def test_the_pipeline_checker_sees_a_lost_event_an_early_start_and_an_unnamed_failure(world: World) -> None:
    # GIVEN a map evaluation waiting for a training job
    pipes = Pipelines.attach(world)
    world.engine.submit(make_request("data_parallel", job_id="up", shards=2, rounds=1))
    assert pipes.submit("up", make_request("map", job_id="down", shards=2), "final_model") == "down"
    assert pipes.problems() == []
    # and "best" of a job that is not a sweep: refused, naming after.use, nothing created
    assert pipes.submit("up", make_request("map", job_id="x", shards=2), "best") is None
    # WHEN the training is cancelled: its Job Finished event is published
    cancel(world.engine, "up")
    assert pipes.tap.published == ["up"]
    # THEN an event counted as delivered that never reached the handler leaves a WAITING follower
    pipes.delivered["up"] = len(pipes.tap.published)
    assert any("still WAITING after up ended CANCELLED" in p for p in pipes.problems())
    # WHEN the event really reaches the pipeline handler THEN the follower ends naming it, and
    # its own event is published (a chain ends down the line)
    assert pipes.deliver(0) == "up"
    assert pipes.problems() == []
    down = world.engine.store.get_job("down")
    assert down.status == "FAILED" and "upstream job 'up' ended CANCELLED" in (down.error or "")
    assert pipes.tap.published == ["up", "down"]
    # AND a failure that does not name its upstream, or a start while it is not SUCCEEDED, is seen
    _set(world, "down", error="boom")
    assert any("must name 'up'" in p for p in pipes.problems())
    _set(world, "down", round_started_at="2026-01-01T00:00:00Z")
    problems = pipes.problems()
    assert any("started, but its upstream job is CANCELLED" in p for p in problems)
    assert any("PipelineJobsStarted counted 0 starts, 1 followers started" in p for p in problems)
