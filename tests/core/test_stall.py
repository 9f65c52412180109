"""A job that stopped moving: ``StallWatch`` over real queues, with a clock the test moves.

The same detector serves ``shardq watch`` (its warning line, its JSON event, the withheld ETA)
and the dashboard's job API (its ``stall`` field): both are checked here.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from shardq.cli.watch import Watch
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.settings import Settings
from shardq.core.stall import StallWatch, explain, span
from shardq.local.resources import dlq_urls
from tests.helpers import Clock, result_for, tasks_of
from tests.requests import make_request

pytestmark = pytest.mark.local_cloud


def _queues(clients: dict[str, Any], settings: Settings) -> dict[str, str]:
    dlqs = dlq_urls(clients["sqs"], settings)
    return {"tasks": settings.task_queue_url, "results-dlq": dlqs["results"], "tasks-dlq": dlqs["tasks"]}


def _submit_and_take_one(engine: Engine, settings: Settings, clients: dict[str, Any]) -> Any:
    """A 3-shard map job whose first task a worker received and never answered (it died)."""
    engine.submit(make_request("map", job_id="stuck", shards=3, max_parallel=1))
    [message] = clients["sqs"].receive_message(QueueUrl=settings.task_queue_url, MaxNumberOfMessages=1)[
        "Messages"
    ]
    return tasks_of([message])[0]


def _visibility(clients: dict[str, Any], settings: Settings) -> int:
    attrs = clients["sqs"].get_queue_attributes(
        QueueUrl=settings.task_queue_url, AttributeNames=["VisibilityTimeout"]
    )
    return int(attrs["Attributes"]["VisibilityTimeout"])


def test_a_task_received_and_never_answered_is_a_stall_once_the_threshold_passes(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a job whose only received task is held by a dead worker, watched with a 120 s threshold
    task = _submit_and_take_one(engine, settings, clients)
    clock = Clock(0.0)
    watch = StallWatch(clients["sqs"], _queues(clients, settings), stall_after_s=120, clock=clock)
    job = engine.store.get_job("stuck")
    assert watch.observe(job) is None
    # WHEN 119 s pass without a result, THEN there is no warning yet
    clock.now = 119
    assert watch.observe(job) is None
    # WHEN 312 s pass, THEN the stall names the task in flight and the lease it waits out
    clock.now = 312
    stall = watch.observe(engine.store.get_job("stuck"))
    assert stall is not None and stall.reason == "in_flight" and stall.in_flight == 1
    assert stall.message == (
        "no result for 5m12s; 1 task in flight (still training, or held by a worker that stopped: "
        "its task comes back within the workers' lease, 30 s by default)"
    )
    # WHEN the task's result is recorded, THEN the warning clears, and the clock starts again
    engine.store.record([Outcome(result_for(task))])
    clock.now = 320
    assert watch.observe(engine.store.get_job("stuck")) is None
    clock.now = 400
    assert watch.observe(engine.store.get_job("stuck")) is None


def test_results_in_the_results_dlq_are_named_with_the_command_that_shows_them(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a job that stands still while 2 of its results sit rejected in the results DLQ
    task = _submit_and_take_one(engine, settings, clients)
    queues = _queues(clients, settings)
    for _ in range(2):
        clients["sqs"].send_message(QueueUrl=queues["results-dlq"], MessageBody=result_for(task).to_json())
    clock = Clock(0.0)
    watch = StallWatch(clients["sqs"], queues, stall_after_s=60, clock=clock)
    watch.observe(engine.store.get_job("stuck"))
    # WHEN the threshold passes, THEN the stall names the DLQ first (the results will not come)
    clock.now = 61
    stall = watch.observe(engine.store.get_job("stuck"))
    assert stall is not None and (stall.reason, stall.results_dlq) == ("dlq", 2)
    assert stall.message == (
        "no result for 1m01s; 2 results in the results DLQ — see `shardq dlq show --queue results`"
    )


def test_nothing_in_flight_queued_or_dead_lettered_is_no_stall() -> None:
    # A round waiting for its deadline, say: no evidence of a stall, no warning.
    assert explain(600, tasks=None, results_dlq=0, tasks_dlq=0) is None
    assert span(59.94) == "59.9s" and span(3725) == "1h02m"


def test_a_threshold_of_zero_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="stall_after_s must be a number of seconds > 0, got 0"):
        StallWatch(None, {}, stall_after_s=0)


def test_watch_prints_the_stall_withholds_the_eta_and_says_when_progress_resumes(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN watch (plain text) and watch --json over a job whose received task was never answered
    task = _submit_and_take_one(engine, settings, clients)
    clock = Clock(0.0)
    plain, lines = io.StringIO(), io.StringIO()
    kwargs = {"queues": _queues(clients, settings), "stall_after": 120, "clock": clock}
    watches = [
        Watch(engine=engine, job_id="stuck", out=plain, **kwargs),
        Watch(engine=engine, job_id="stuck", out=lines, json_lines=True, **kwargs),
    ]

    def poll(at: float) -> None:
        clock.now = at
        job = engine.store.get_job("stuck")
        for w in watches:
            w.observe(job)

    # WHEN it polls for 5 minutes without a result
    for at in (0, 60, 312):
        poll(at)
    # THEN one warning line names the task in flight, and the JSON event carries it, ETA withheld
    assert plain.getvalue().count("stalled: no result for 5m12s; 1 task in flight") == 1
    event = json.loads(lines.getvalue().splitlines()[-1])
    assert event["stall"].startswith("no result for 5m12s") and event["eta_s"] is None
    assert watches[0].snapshot(engine.store.get_job("stuck")).line().endswith("ETA —")
    # WHEN the result comes, THEN watch says progress resumed and the event has no stall
    engine.store.record([Outcome(result_for(task))])
    poll(320)
    assert plain.getvalue().splitlines()[-2:] == [
        "  progress resumed",
        "round 1/1 train: 1/3 done, 0 failed · 0.1 tasks/s · ETA 16.0s",
    ]
    assert json.loads(lines.getvalue().splitlines()[-1])["stall"] is None


def test_the_dashboard_job_api_carries_the_stall(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    pytest.importorskip("starlette", reason="dashboard packages not installed: run `make dashboard`")
    from shardq.dashboard.data import DashboardData

    # GIVEN the dashboard over a job whose received task was never answered
    task = _submit_and_take_one(engine, settings, clients)
    clock = Clock(0.0)
    clock.now = 1_000_000.0
    data = DashboardData(
        store=engine.store,
        sqs=clients["sqs"],
        s3=clients["s3"],
        queues=_queues(clients, settings),
        clock=clock,
    )
    assert data.job("stuck")["stall"] is None
    # WHEN 3 minutes pass without a result, THEN the job API says why the job stands still
    clock.now += 180
    stall = data.job("stuck")["stall"]
    assert stall["reason"] == "in_flight" and stall["message"].startswith(
        "no result for 3m00s; 1 task in flight"
    )
    # WHEN the result comes, THEN the field is null again
    engine.store.record([Outcome(result_for(task))])
    clock.now += 2
    assert data.job("stuck")["stall"] is None
